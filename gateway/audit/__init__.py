"""The audit log: RFC 9162 Merkle hashing, signed checkpoints and the proofs members check offline.

Pure and standalone: nothing here reads the ledger's database or a clock. The ledger feeds
leaf hashes in (`LogTree` as it grows, `TreeView` over the stored hashes for proofs), signs
checkpoints with `Signer`, and hands members bundles they check with `check_proof_files`.
See README.md in this folder for the formats and how to check a proof by hand.
"""

from gateway.audit.checkpoints import (
    Checkpoint,
    CheckpointError,
    Signer,
    Verifier,
    at_second,
    load_or_create_key,
)
from gateway.audit.merkle import (
    EMPTY_ROOT,
    AuditError,
    LogTree,
    ProofError,
    TreeView,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from gateway.audit.proofs import (
    BundleError,
    check_bundle,
    check_proof_files,
    consistency_bundle,
    inclusion_bundle,
)

__all__ = [
    "EMPTY_ROOT",
    "AuditError",
    "BundleError",
    "Checkpoint",
    "CheckpointError",
    "LogTree",
    "ProofError",
    "Signer",
    "TreeView",
    "Verifier",
    "at_second",
    "check_bundle",
    "check_proof_files",
    "consistency_bundle",
    "inclusion_bundle",
    "leaf_hash",
    "load_or_create_key",
    "node_hash",
    "root_from_inclusion_proof",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]
