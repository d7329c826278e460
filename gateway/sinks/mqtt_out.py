"""`MqttPublisherSink`: the journal's records to an MQTT broker, never losing one.

This is the bridge's outbox (see gateway/bridge.py). The sink keeps its own cursor in
the journal (consumer `bridge`). It reads the rows after the cursor, encodes them as
the bridge's wire format (`gateway.decoders.commonwatt_bridge.wire`: up to 500 records
per message, one topic per device), publishes every message of the batch with QoS 1,
and moves the cursor only once the broker has acknowledged each one (PUBACK). So:

- the broker is away (stopped, restarting, the network down): paho keeps the
  unacknowledged messages and sends them again when it has reconnected (retrying
  every 1 s doubling up to `max_backoff_s`); the cursor stays where it was and new
  rows wait in the journal, which is the buffer, however long the outage;
- the broker refuses a message (an MQTT 5 PUBACK with an error reason: not authorized
  by its ACL, quota exceeded), or leaves it unanswered for `ack_timeout_s` on a live
  connection: it is published again with backoff until the broker takes it; the reason
  is in `health.last_error`. Nothing is skipped;
- the bridge dies between a publish and the cursor update: the batch is published
  again after the restart. The records carry the device's time, so the gateway stores
  the same readings again, which the TSDB keeps once and counters see as no energy.

A PUBACK means the broker has taken the message, not that a subscriber has it: the
gateway must hold a persistent session on the broker (it does, after its first
connection) for messages to wait there while the gateway is down.

paho's network thread runs beside a sink thread of its own that reads the journal and
waits for acknowledgements; the event loop is never blocked. `async with` (or `with`).
The thread, the cursor and the health it shares with the TSDB sink are in
`gateway.sinks.base`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.config import MqttSettings
from gateway.decoders.commonwatt_bridge.wire import MAX_RECORDS, OFFLINE, ONLINE, encode_rows, status_topic
from gateway.journal import Journal
from gateway.journal.schema import Row
from gateway.sinks.base import FIRST_BACKOFF_S, JournalSink, SinkHealth, Stopped

log = logging.getLogger(__name__)

#: How long a clean stop waits for the retained `offline` to be acknowledged.
OFFLINE_WAIT_S = 2.0

Message = tuple[str, bytes]


@dataclass
class PublisherHealth(SinkHealth):
    """Live state of the sink, shown like the TSDB sink's (`as_json()`).

    `connected` is True while connected to the broker; `retries` counts the messages refused
    or left unanswered by the broker, and published again; `skipped` counts the rows that are
    not sent (event rows, readings without a finite value), by reason. `lag`: journal rows not
    yet acknowledged by the broker.
    """

    name: str = "mqtt_out"
    broker: str = ""
    messages_published: int = 0
    records_published: int = 0

    def _target_json(self) -> dict[str, Any]:
        return {"broker": self.broker}

    def _counts_json(self) -> dict[str, Any]:
        return {"messages_published": self.messages_published, "records_published": self.records_published}


class MqttPublisherSink(JournalSink[PublisherHealth]):
    """Publishes the journal's records from cursor `consumer`, at least once, each device in order."""

    kind = "MQTT publisher"

    def __init__(
        self,
        *,
        journal_path: str | Path,
        settings: MqttSettings,
        site: str,
        client_id: str,
        consumer: str = "bridge",
        batch_size: int = 5000,
        max_records: int = MAX_RECORDS,
        max_backoff_s: float = 30.0,
        ack_timeout_s: float = 60.0,
        poll_s: float = 0.5,
    ) -> None:
        super().__init__(
            journal_path=journal_path,
            health=PublisherHealth(broker=f"{settings.host}:{settings.port}"),
            consumer=consumer,
            batch_size=batch_size,
            max_backoff_s=max_backoff_s,
            poll_s=poll_s,
        )
        self.settings = settings
        self.site = site
        self.max_records = max_records
        self.ack_timeout_s = ack_timeout_s
        self.client = self._make_client(client_id)
        # Guarded by `_progress`, like the cursor in `health`.
        self._acked: set[int] = set()
        self._refused: dict[int, str] = {}

    def _make_client(self, client_id: str) -> paho.Client:
        s = self.settings
        v5 = s.version == "5"
        protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
        extra: dict[str, Any] = {} if v5 else {"clean_session": True}
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **extra)
        if s.username:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            import ssl

            client.tls_set(ca_certs=str(s.ca_file) if s.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(status_topic(self.site), OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(self.max_backoff_s)))
        client.max_queued_messages_set(0)  # unlimited: the batch size bounds what is in memory
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # -- the public surface (any thread) -----------------------------------------------------

    def start(self) -> None:
        """Open the journal, start connecting, start the sink thread; raises if the journal cannot be opened."""
        super().start()
        s = self.settings
        self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self.client.loop_start()

    def close(self) -> None:
        """Stop; a batch not yet acknowledged waits in the journal. Publishes the retained `offline`."""
        super().close()
        if self.health.connected:
            info = self.client.publish(status_topic(self.site), OFFLINE, qos=1, retain=True)
            with self._progress:
                self._progress.wait_for(lambda: info.mid in self._acked, OFFLINE_WAIT_S)
        self.client.disconnect()
        self.client.loop_stop()
        self.health.set_connected(False, "stopped")

    # -- paho's network thread ---------------------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.health.set_connected(False, f"broker refused: {reason}")
            log.warning("broker %s refused the connection: %s", self.health.broker, reason)
            return
        client.publish(status_topic(self.site), ONLINE, qos=1, retain=True)
        self.health.set_connected(True)
        log.info("connected to %s", self.health.broker)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.health.connected:
            log.warning("disconnected from %s: %s", self.health.broker, reason)
        self.health.set_connected(False, f"disconnected: {reason}")

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._progress:
            if reason.is_failure:
                self._refused[mid] = str(reason)
            else:
                self._acked.add(mid)
            self._progress.notify_all()

    # -- the sink thread ---------------------------------------------------------------------

    def _serve(self, journal: Journal) -> None:
        while not self._stop.is_set():
            if rows := self._read_batch(journal):
                self._deliver(rows)
                self._advance(journal, rows[-1][0])

    def _deliver(self, rows: list[Row]) -> None:
        """Publish the rows' messages; returns once the broker has acknowledged all of them."""
        encoded = encode_rows(rows, self.site, self.max_records)
        self.health.skipped.update(encoded.skipped)
        todo = encoded.messages
        delay = FIRST_BACKOFF_S
        while todo:
            refused = self._publish_acked(todo)
            if refused:
                self.health.retries += len(refused)
                log.warning("%d message(s) not taken (%s), again in %.1fs", len(refused), self.health.last_error, delay)
                self._pause(delay)
                delay = min(delay * 2, self.max_backoff_s)
            todo = refused
        self.health.messages_published += len(encoded.messages)
        self.health.records_published += encoded.records
        self.health.last_ok_ts = time.time()

    def _publish_acked(self, messages: list[Message]) -> list[Message]:
        """Publish with QoS 1 and wait until each is acknowledged; returns those to publish again."""
        with self._progress:
            self._acked.clear()
            self._refused.clear()
        # While disconnected, paho queues these and sends them once it has reconnected.
        sent = {self.client.publish(topic, body, qos=1).mid: (topic, body) for topic, body in messages}
        with self._progress:
            unsettled = self._wait_settled(set(sent))
            again = [sent[m] for m in sent if m in self._refused or m in unsettled]
            if self._refused:
                self.health.last_error = f"broker refused: {next(iter(self._refused.values()))}"
            elif unsettled:
                self.health.last_error = f"no acknowledgement in {self.ack_timeout_s:.0f}s"
            return again

    def _wait_settled(self, mids: set[int]) -> set[int]:
        """With `_progress` held: wait until every mid is acknowledged or refused; returns the others.

        While disconnected there is no limit (paho sends them again after reconnecting); once
        connected, a message with no answer after `ack_timeout_s` is given up and published again.
        """
        deadline = time.monotonic() + self.ack_timeout_s
        while unsettled := {m for m in mids if m not in self._acked and m not in self._refused}:
            if self._stop.is_set():
                raise Stopped
            if not self.health.connected:
                deadline = time.monotonic() + self.ack_timeout_s
            elif time.monotonic() > deadline:
                return unsettled
            self._progress.wait(0.5)
        return set()
