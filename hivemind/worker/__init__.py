"""The worker side of HiveMind: task bundles, bundle execution and the function pool."""
