"""The kubelet Device Plugin API v1beta1: gRPC handlers, registration, the running servers."""
