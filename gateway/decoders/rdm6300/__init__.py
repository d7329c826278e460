"""RDM6300 / RDM630 125 kHz badge readers, and keyboard-wedge readers that type the card number."""

from gateway.decoders.rdm6300.decoder import RDM6300Decoder

__all__ = ["RDM6300Decoder"]
