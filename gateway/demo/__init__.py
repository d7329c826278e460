"""The demo lab: an embedded MQTT broker and simulated devices in their real formats."""

from gateway.demo.broker import EmbeddedBroker
from gateway.demo.physics import SiteSettings, SiteSnapshot
from gateway.demo.simulators import GATEWAY_DEVICES, DemoDevice, DemoSite, DemoTiming

__all__ = ["GATEWAY_DEVICES", "DemoDevice", "DemoSite", "DemoTiming", "EmbeddedBroker", "SiteSettings", "SiteSnapshot"]
