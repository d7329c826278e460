"""Shelly Gen1 devices (1PM, Plug S, 2.5, EM, 3EM ...) over MQTT. See README.md."""

from gateway.decoders.shelly_gen1.decoder import ShellyGen1Decoder

__all__ = ["ShellyGen1Decoder"]
