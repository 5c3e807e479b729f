"""Adapters layer: the OCPP 1.6J link to the operator's backend (docs/ocpp.md).

``settings`` is plain data (the config loader builds it without importing the ``ocpp``
library); ``station`` is the charge point on the ``ocpp`` library and websockets; ``frames``
checks requests and answers them in 1.6's error codes; ``keys`` the configuration keys;
``auth`` the local list and the cache; ``meter`` meter values and statuses; ``site`` the port
the app implements.
"""
