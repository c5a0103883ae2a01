"""The neural half of wta-bridge: image decoding, ONNX Runtime inference and the gRPC service.

Importing the package loads nothing heavy; `service.server`, `service.client` and
`service.batch` import gRPC and ONNX Runtime when they are imported themselves.
"""
