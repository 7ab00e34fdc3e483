"""The kubelet DRA plugin v1 (SPEC §11, node side): registration, prepare/unprepare, CDI specs."""
