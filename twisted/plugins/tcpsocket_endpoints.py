"""Registers the ``tcpsocket:`` client endpoint string (``clientFromString``)."""

from tcpsocket.client.strports import TcpSocketEndpointParser

tcpsocketEndpoint = TcpSocketEndpointParser()
