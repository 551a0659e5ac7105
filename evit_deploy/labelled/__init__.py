"""Labelled data and the task metrics on it, below every command that scores on it.

``datasets`` (layouts on disk -> checked samples), ``protocol`` (the official resize / upsample /
argmax), ``metrics`` (confusion-matrix mIoU, top-k), ``scoring`` (one prediction's update of a
metric, and ``LabelledScore``: a dataset as the yardstick of ``export --max-drop``). ``evit eval``
and ``evit benchmark`` score artifacts with them; the int8 accuracy control of every target scores
its candidates with them, which is why they sit on the services floor.
"""
