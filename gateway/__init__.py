"""The jetgate gRPC gateway: validates typed events and stores them in JetStream."""
