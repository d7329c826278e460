"""Victron VE.Direct TEXT protocol: MPPT solar chargers, BMV and SmartShunt battery monitors."""

from gateway.decoders.vedirect.decoder import VEDirectDecoder

__all__ = ["VEDirectDecoder"]
