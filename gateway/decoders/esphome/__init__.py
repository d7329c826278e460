"""ESPHome nodes of firmware-bridge/ (badge reader, relay, power meter) over MQTT. See README.md."""

from gateway.decoders.esphome.decoder import ESPHomeDecoder, parse_sensors, relay_command, state_topics
from gateway.decoders.esphome.fields import CONTRACT_VERSION

__all__ = ["CONTRACT_VERSION", "ESPHomeDecoder", "parse_sensors", "relay_command", "state_topics"]
