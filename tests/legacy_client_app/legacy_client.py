"""The mistake a Flower user makes first: a legacy ClientApp(client_fn=...) serving a NumPyClient,
run against this project's Message-API ServerApp (tests/test_numpy_client.py)."""

from flwr.client import ClientApp

from fedgma.client_app import client_fn

app = ClientApp(client_fn=lambda context: client_fn(context).to_client())
