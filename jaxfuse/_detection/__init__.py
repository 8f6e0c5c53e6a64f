"""Class activation sequences to proposals and fused detections."""
