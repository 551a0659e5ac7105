"""Export, verify and profile on this machine: the work behind the API, below the device layer.

``api`` routes a request here or to a device (``remote``); ``remote`` itself comes here for
the parts done locally (the plan of a device-built engine, the device worker's own profile).
"""
