//! Detector engine, rule files and the RBAC state model of auditlake (built by the
//! streaming-detectors issue; the crate exists now so the dependency direction is fixed).
