"""Records published by `commonwatt bridge` (a serial-only gateway next to the devices). See README.md."""

from gateway.decoders.commonwatt_bridge.decoder import BridgeDecoder

__all__ = ["BridgeDecoder"]
