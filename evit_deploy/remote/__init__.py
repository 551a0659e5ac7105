"""Remote devices over SSH: the host side (``session``, ``flows``, ``ssh``) and the device side
(``worker``, ``state``), which share only ``protocol`` and never import torch.

See ``evit_deploy.devices`` for the inventory and README "Remote devices" for the set-up.
"""
