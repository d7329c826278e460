"""Generic JSON / plain-text MQTT payloads, mapped by configured rules. See README.md."""

from gateway.decoders.generic_json.decoder import GenericJsonDecoder

__all__ = ["GenericJsonDecoder"]
