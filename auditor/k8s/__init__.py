"""Kubernetes: who an IP was (inventory, attribute), how the sensors are deployed
(manifests), and whether a Gretel Hybrid install is ready to be audited (preflight).

A sensor attributes with::

    from auditor.k8s.attribute import attribute
    from auditor.k8s.cluster import api_client
    from auditor.k8s.inventory import config_from_env, start_inventory

    config = config_from_env(dict(os.environ))          # None when no inventory is configured
    watcher = start_inventory(api_client(), config, writer)  # outages are chained through `writer`
    event = attribute(event, watcher.inventory)
    ...
    watcher.stop()

Nothing is imported here, so `import auditor.k8s` does not load the Kubernetes client.
"""
