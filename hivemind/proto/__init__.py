"""The node pool's gRPC API: ``hivemind.proto`` and the code generated from it."""
