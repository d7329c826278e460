"""Victron Venus OS (Cerbo GX, Venus on a Raspberry Pi) over MQTT. See README.md."""

from gateway.decoders.victron_venus.decoder import VictronVenusDecoder, full_keepalive, quiet_keepalive

__all__ = ["VictronVenusDecoder", "full_keepalive", "quiet_keepalive"]
