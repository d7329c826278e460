"""What an ESPHome node of firmware-bridge/CONTRACT.md publishes, as tables.

ESPHome's MQTT component publishes each entity's state as plain text on
`<topic_prefix>/<component>/<object_id>/state`: a number with the entity's
accuracy (`412.6`, `nan` while the sensor has no value) for a `sensor`, `ON` or
`OFF` for a `switch` and a `binary_sensor`. The object ids are fixed by the
contract; the units are the ones the contract's YAML sets, already the
vocabulary's units, so nothing is scaled here.
"""

from __future__ import annotations

#: The version of CONTRACT.md this decoder implements. Messages of a newer one are refused.
CONTRACT_VERSION = 1

#: The components whose state topics are read. `text_sensor` carries only the contract version.
COMPONENTS = ("sensor", "binary_sensor", "switch", "text_sensor")
#: Components whose entities can be given a metric (text states are not numbers).
NUMERIC_COMPONENTS = ("sensor", "binary_sensor", "switch")

#: (component, object_id) -> metric: the contract's entities. The `sensors` option adds to it.
ENTITIES: dict[tuple[str, str], str] = {
    ("sensor", "power"): "power_w",
    ("sensor", "energy"): "energy_wh",
    ("sensor", "voltage"): "voltage_v",
    ("sensor", "current"): "current_a",
    ("sensor", "temperature"): "temperature_c",
    ("switch", "relay"): "relay_on",
}

#: Entities the firmware-bridge nodes publish for the operator that the gateway does not read.
INFORMATIONAL = frozenset({("sensor", "wifi_signal")})

#: The text_sensor that states the contract version the node implements.
VERSION_ENTITY = ("text_sensor", "contract_version")

#: Plain-text states of a switch or binary_sensor (ESPHome accepts any case; it sends upper case).
ON_OFF = {"on": 1.0, "off": 0.0}
#: Birth message and last will on `<topic_prefix>/status`.
STATUS = {"online": 1.0, "offline": 0.0}
#: A sensor that has no value yet: ESPHome sends `nan` (`None` with publish_nan_as_none).
NO_VALUE = frozenset({"nan", "-nan", "none"})

#: Badge UIDs: whole bytes of hex (2 digits each), 4 (RDM6300: 8 digits) to 10 bytes (PN532 triple-size UIDs).
UID_MIN_DIGITS = 8
UID_MAX_DIGITS = 20
