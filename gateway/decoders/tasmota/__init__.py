"""Tasmota (plugs, relays, energy meters) over MQTT. See README.md."""

from gateway.decoders.tasmota.decoder import TasmotaDecoder

__all__ = ["TasmotaDecoder"]
