"""Shelly Gen2+ devices (Plus, Pro, Gen3, Gen4) over MQTT. See README.md."""

from gateway.decoders.shelly_gen2.decoder import ShellyGen2Decoder

__all__ = ["ShellyGen2Decoder"]
