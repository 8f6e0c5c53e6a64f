"""Raw proposals to fused detections: overlap measures, the greedy grouping rule, fusion of grouped proposals, NMS and Soft-NMS, dataset-level entry points."""
