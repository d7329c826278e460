"""DSMR P1 smart meters (NL, BE, LU) over serial. See README.md."""

from gateway.decoders.dsmr.decoder import DSMRDecoder

__all__ = ["DSMRDecoder"]
