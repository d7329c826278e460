"""PUBLISH packets read straight out of a receive buffer: the MQTT source's fast path.

paho-mqtt turns every incoming packet into a dict of reading state, a `PublishPacket`,
an `MQTTMessage` and a callback dispatch with topic matching: more Python per message
than decoding and journaling it. `take_publishes` reads the common case, a complete
PUBLISH at QoS 0 or 1 without MQTT 5 properties, from a buffer of received bytes in one
tight loop, and stops at the first packet it does not take: an incomplete one (its rest
is still in the socket), any other packet type, QoS 2, MQTT 5 properties, or anything
malformed. The caller hands that packet to paho, which handles it (or rejects it as a
protocol error) as always, and goes on from there.

Wire format (MQTT 3.1.1 section 3.3, MQTT 5.0 section 3.3):

    fixed header   0x3X (X = DUP << 3 | QoS << 1 | RETAIN), remaining length
                   (a varint of 1 to 4 bytes, 7 bits each, least significant first)
    variable head  topic length (2 bytes, big endian), topic (UTF-8), packet id
                   (2 bytes, QoS 1 and 2 only), MQTT 5: properties length (varint)
                   and properties
    payload        the rest of the remaining length
"""

from __future__ import annotations

#: (topic as sent, payload, QoS, packet id); the packet id is 0 at QoS 0.
Publish = tuple[bytes, bytes, int, int]


def take_publishes(buf: bytes, pos: int, mqtt5: bool) -> tuple[list[Publish], int]:
    """The complete QoS 0/1 PUBLISH packets from `buf[pos:]` on, and where the first other packet starts.

    Returns `(publishes, stop)`: `stop == len(buf)` when every byte was taken, else
    `buf[stop:]` starts with a packet (or part of one) for paho to read. With `mqtt5`,
    only PUBLISH packets with an empty property list are taken (the properties length
    is then the single byte 0); a packet with properties goes to paho, which parses them.
    """
    out: list[Publish] = []
    append = out.append
    end = len(buf)
    while pos + 1 < end:
        first = buf[pos]
        # Type 3 (PUBLISH) with QoS bit 1 clear, i.e. QoS 0 or 1; DUP and RETAIN may be anything.
        if first & 0xF4 != 0x30:
            break
        byte = buf[pos + 1]
        p = pos + 2
        if byte < 0x80:
            length = byte
        else:
            length = byte & 0x7F
            shift = 7
            while True:
                if p >= end or shift > 21:  # incomplete, or more than 4 length bytes (a protocol error)
                    return out, pos
                byte = buf[p]
                p += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
        stop = p + length
        if stop > end or length < 2:
            break
        topic_end = p + 2 + ((buf[p] << 8) | buf[p + 1])
        if topic_end == p + 2:  # an empty topic: malformed in 3.1.1, a topic alias in 5
            break
        if first & 0x02:
            body = topic_end + 2
            if body > stop:
                break
            mid = (buf[topic_end] << 8) | buf[topic_end + 1]
            if mid == 0:  # packet id 0 is not allowed at QoS 1
                break
            qos = 1
        else:
            body = topic_end
            if body > stop:
                break
            mid = 0
            qos = 0
        if mqtt5:
            if body >= stop or buf[body] != 0:
                break
            body += 1
        append((buf[p + 2 : topic_end], buf[body:stop], qos, mid))
        pos = stop
    return out, pos


__all__ = ["Publish", "take_publishes"]
