"""Actuators: what the gateway switches. Today the machines' relays (see relays.py)."""

from gateway.actuators.relays import (
    OutgoingMessage,
    RelayActuator,
    RelayTarget,
    RpcReply,
    RpcReplyError,
    SentCommand,
    UnknownRelay,
    parse_rpc_reply,
    relay_messages,
    rpc_reply_topic,
    split_channel,
)

__all__ = [
    "OutgoingMessage",
    "RelayActuator",
    "RelayTarget",
    "RpcReply",
    "RpcReplyError",
    "SentCommand",
    "UnknownRelay",
    "parse_rpc_reply",
    "relay_messages",
    "rpc_reply_topic",
    "split_channel",
]
