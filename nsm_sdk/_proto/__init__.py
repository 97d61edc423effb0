"""Generated protobuf and gRPC modules, built from proto/ at install time (see setup.py). Never edit."""
