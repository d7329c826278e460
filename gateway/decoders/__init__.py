"""Protocol registry: one line per protocol. Each protocol is a folder of its own."""

from __future__ import annotations

from importlib import import_module

from gateway.decoders.base import ChecksumError, DecodeError, MqttDecoder, SerialDecoder

# name -> "module:Class". Imported lazily so one protocol's dependency never slows another.
PROTOCOLS: dict[str, str] = {
    "shelly_gen2": "gateway.decoders.shelly_gen2:ShellyGen2Decoder",
    "shelly_gen1": "gateway.decoders.shelly_gen1:ShellyGen1Decoder",
    "tasmota": "gateway.decoders.tasmota:TasmotaDecoder",
    "opendtu": "gateway.decoders.opendtu:OpenDTUDecoder",
    "victron_venus": "gateway.decoders.victron_venus:VictronVenusDecoder",
    "esphome": "gateway.decoders.esphome:ESPHomeDecoder",
    "generic_json": "gateway.decoders.generic_json:GenericJsonDecoder",
    "dsmr": "gateway.decoders.dsmr:DSMRDecoder",
    "vedirect": "gateway.decoders.vedirect:VEDirectDecoder",
    "rdm6300": "gateway.decoders.rdm6300:RDM6300Decoder",
    "commonwatt_bridge": "gateway.decoders.commonwatt_bridge:BridgeDecoder",
}


def decoder_class(name: str) -> type[MqttDecoder] | type[SerialDecoder]:
    """The decoder class of a protocol; KeyError naming the known ones when unknown."""
    try:
        target = PROTOCOLS[name]
    except KeyError:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}") from None
    module, _, cls = target.partition(":")
    found: type[MqttDecoder] | type[SerialDecoder] = getattr(import_module(module), cls)
    return found


def is_serial(name: str) -> bool:
    return issubclass(decoder_class(name), SerialDecoder)


__all__ = [
    "PROTOCOLS",
    "ChecksumError",
    "DecodeError",
    "MqttDecoder",
    "SerialDecoder",
    "decoder_class",
    "is_serial",
]
