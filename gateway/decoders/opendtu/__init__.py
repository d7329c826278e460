"""OpenDTU (Hoymiles micro-inverters) over MQTT. See README.md."""

from gateway.decoders.opendtu.decoder import OpenDTUDecoder

__all__ = ["OpenDTUDecoder"]
