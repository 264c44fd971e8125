"""The node pool: gRPC server, authentication, scheduling and leases."""
