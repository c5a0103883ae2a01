"""Stubs generated from protos/wtabridge/v1/symbols.proto by `python -m service.protogen`; do not edit."""
