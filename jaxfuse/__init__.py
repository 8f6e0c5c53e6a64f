"""jaxfuse: JAX-accelerated template fusion of overlapping temporal action instances.

Instead of non-maximum suppression, each group of overlapping scored segments is
fused into one instance by fitting a template distribution to the group under
softmax(score / T) sampling probabilities (Zhou et al., CVPR 2023).
"""

# Result codes, presets, published constants, padding
from jaxfuse._core.padding import (
    bucket_size as bucket_size,
)
from jaxfuse._core.result_codes import (
    LPResultCode as LPResultCode,
)
from jaxfuse._core.result_codes import (
    ResultCode as ResultCode,
)
from jaxfuse._core.settings import (
    DEFAULT as DEFAULT,
)
from jaxfuse._core.settings import (
    PRESETS as PRESETS,
)
from jaxfuse._core.settings import (
    PUBLISHED as PUBLISHED,
)
from jaxfuse._core.settings import (
    PUBLISHED_CLASS_THRESHOLD as PUBLISHED_CLASS_THRESHOLD,
)
from jaxfuse._core.settings import (
    PUBLISHED_THRESHOLDS as PUBLISHED_THRESHOLDS,
)
from jaxfuse._core.settings import (
    FusionSettings as FusionSettings,
)
from jaxfuse._core.version import VERSION

# CAS to proposals and detections
from jaxfuse._detection.cas_proposals import (
    CasProposals as CasProposals,
)
from jaxfuse._detection.cas_proposals import (
    max_runs_per_threshold as max_runs_per_threshold,
)
from jaxfuse._detection.cas_proposals import (
    proposals_from_cas as proposals_from_cas,
)
from jaxfuse._detection.detect import (
    VideoDetections as VideoDetections,
)
from jaxfuse._detection.detect import (
    detect as detect,
)
from jaxfuse._detection.detect import (
    detect_videos as detect_videos,
)

# Evaluation
from jaxfuse._evaluation.activitynet_json import (
    ActivityNetData as ActivityNetData,
)
from jaxfuse._evaluation.activitynet_json import (
    evaluate_json as evaluate_json,
)
from jaxfuse._evaluation.activitynet_json import (
    load_activitynet_json as load_activitynet_json,
)
from jaxfuse._evaluation.evaluate import (
    ACTIVITYNET_THRESHOLDS as ACTIVITYNET_THRESHOLDS,
)
from jaxfuse._evaluation.evaluate import (
    THUMOS14_THRESHOLDS as THUMOS14_THRESHOLDS,
)
from jaxfuse._evaluation.evaluate import (
    DetectionMAP as DetectionMAP,
)
from jaxfuse._evaluation.evaluate import (
    Detections as Detections,
)
from jaxfuse._evaluation.evaluate import (
    GroundTruth as GroundTruth,
)
from jaxfuse._evaluation.evaluate import (
    evaluate_detections as evaluate_detections,
)

# Fusion of groups: templates, densities, fitters, padded and ragged entry points
from jaxfuse._fusion.closed_forms import (
    ExponentialParameters as ExponentialParameters,
)
from jaxfuse._fusion.closed_forms import (
    GaussianParameters as GaussianParameters,
)
from jaxfuse._fusion.closed_forms import (
    LaplaceParameters as LaplaceParameters,
)
from jaxfuse._fusion.closed_forms import (
    UniformParameters as UniformParameters,
)
from jaxfuse._fusion.densities import (
    TemplateDensity as TemplateDensity,
)
from jaxfuse._fusion.densities import (
    exponential_density as exponential_density,
)
from jaxfuse._fusion.densities import (
    gaussian_density as gaussian_density,
)
from jaxfuse._fusion.densities import (
    laplace_density as laplace_density,
)
from jaxfuse._fusion.densities import (
    student_t_density as student_t_density,
)
from jaxfuse._fusion.densities import (
    uniform_density as uniform_density,
)
from jaxfuse._fusion.fuse_groups import (
    FusionResult as FusionResult,
)
from jaxfuse._fusion.fuse_groups import (
    compile_count as compile_count,
)
from jaxfuse._fusion.fuse_groups import (
    fuse_exponential as fuse_exponential,
)
from jaxfuse._fusion.fuse_groups import (
    fuse_gaussian as fuse_gaussian,
)
from jaxfuse._fusion.fuse_groups import (
    fuse_groups as fuse_groups,
)
from jaxfuse._fusion.fuse_groups import (
    fuse_laplace as fuse_laplace,
)
from jaxfuse._fusion.fuse_groups import (
    fuse_student_t as fuse_student_t,
)
from jaxfuse._fusion.fuse_groups import (
    fuse_uniform as fuse_uniform,
)
from jaxfuse._fusion.fuse_ragged import (
    RaggedFusion as RaggedFusion,
)
from jaxfuse._fusion.fuse_ragged import (
    fuse_ragged as fuse_ragged,
)
from jaxfuse._fusion.generic_fit import (
    FitResult as FitResult,
)
from jaxfuse._fusion.generic_fit import (
    fit_template as fit_template,
)
from jaxfuse._fusion.packing import (
    PackedGroups as PackedGroups,
)
from jaxfuse._fusion.packing import (
    RaggedBuckets as RaggedBuckets,
)
from jaxfuse._fusion.packing import (
    pack_groups as pack_groups,
)
from jaxfuse._fusion.packing import (
    pack_ragged as pack_ragged,
)
from jaxfuse._fusion.packing import (
    unpack_groups as unpack_groups,
)
from jaxfuse._fusion.packing import (
    unpack_members as unpack_members,
)
from jaxfuse._fusion.packing import (
    unpack_ragged as unpack_ragged,
)
from jaxfuse._fusion.packing import (
    unpack_ragged_members as unpack_ragged_members,
)
from jaxfuse._fusion.student_t import (
    StudentTParameters as StudentTParameters,
)
from jaxfuse._fusion.weights import (
    member_probabilities as member_probabilities,
)
from jaxfuse._labels.pseudo_labels import (
    PseudoLabels as PseudoLabels,
)

# Training-time pseudo labels
from jaxfuse._labels.pseudo_labels import (
    pseudo_labels as pseudo_labels,
)
from jaxfuse._labels.snippets import (
    SnippetLabels as SnippetLabels,
)
from jaxfuse._labels.snippets import (
    segments_to_snippets as segments_to_snippets,
)

# Proposals: grouping, fusion, NMS, detection files
from jaxfuse._proposals.detection_file import (
    DetectionFileError as DetectionFileError,
)
from jaxfuse._proposals.detection_file import (
    FileFusionReport as FileFusionReport,
)
from jaxfuse._proposals.detection_file import (
    fuse_detection_file as fuse_detection_file,
)
from jaxfuse._proposals.detection_file import (
    fuse_detections_json as fuse_detections_json,
)
from jaxfuse._proposals.fuse_proposals import (
    FusedProposals as FusedProposals,
)
from jaxfuse._proposals.fuse_proposals import (
    fuse_proposals as fuse_proposals,
)
from jaxfuse._proposals.grouping import (
    ProposalGroups as ProposalGroups,
)
from jaxfuse._proposals.grouping_entry import (
    group_proposals as group_proposals,
)
from jaxfuse._proposals.proposal_lists import (
    PaddedProposals as PaddedProposals,
)
from jaxfuse._proposals.proposal_lists import (
    fuse_proposal_lists as fuse_proposal_lists,
)
from jaxfuse._proposals.proposal_lists import (
    pack_proposals as pack_proposals,
)
from jaxfuse._proposals.proposal_lists import (
    unpack_proposals as unpack_proposals,
)
from jaxfuse._proposals.sharding import (
    fuse_proposals_sharded as fuse_proposals_sharded,
)
from jaxfuse._proposals.sharding import (
    item_mesh as item_mesh,
)
from jaxfuse._runtime.compilation_cache import (
    CompilationCacheStatus as CompilationCacheStatus,
)

# Compilation cache
from jaxfuse._runtime.compilation_cache import (
    compilation_cache_status as compilation_cache_status,
)
from jaxfuse._runtime.compilation_cache import (
    set_compilation_cache as set_compilation_cache,
)
from jaxfuse.tools.videos import (
    SyntheticVideos as SyntheticVideos,
)
from jaxfuse.tools.videos import (
    VideoParameters as VideoParameters,
)

# Synthetic data
from jaxfuse.tools.videos import (
    synthetic_videos as synthetic_videos,
)

__version__ = VERSION

# The persistent compilation cache is set up at jaxfuse's first call that may compile, not at import
# (see jaxfuse/_runtime/compilation_cache.py: ensure_compilation_cache).

__all__ = [
    "ACTIVITYNET_THRESHOLDS",
    "ActivityNetData",
    "CasProposals",
    "CompilationCacheStatus",
    "DetectionFileError",
    "DEFAULT",
    "DetectionMAP",
    "Detections",
    "ExponentialParameters",
    "FileFusionReport",
    "FitResult",
    "FusedProposals",
    "FusionSettings",
    "FusionResult",
    "GaussianParameters",
    "GroundTruth",
    "LPResultCode",
    "LaplaceParameters",
    "PUBLISHED_CLASS_THRESHOLD",
    "PUBLISHED_THRESHOLDS",
    "PRESETS",
    "PUBLISHED",
    "PackedGroups",
    "PaddedProposals",
    "ProposalGroups",
    "PseudoLabels",
    "RaggedBuckets",
    "RaggedFusion",
    "ResultCode",
    "SnippetLabels",
    "StudentTParameters",
    "SyntheticVideos",
    "THUMOS14_THRESHOLDS",
    "TemplateDensity",
    "UniformParameters",
    "VideoDetections",
    "VideoParameters",
    "bucket_size",
    "compilation_cache_status",
    "compile_count",
    "detect",
    "detect_videos",
    "evaluate_detections",
    "evaluate_json",
    "exponential_density",
    "fit_template",
    "fuse_detection_file",
    "fuse_detections_json",
    "fuse_exponential",
    "fuse_gaussian",
    "fuse_groups",
    "fuse_laplace",
    "fuse_proposal_lists",
    "fuse_proposals",
    "fuse_proposals_sharded",
    "fuse_ragged",
    "fuse_student_t",
    "fuse_uniform",
    "gaussian_density",
    "group_proposals",
    "item_mesh",
    "laplace_density",
    "load_activitynet_json",
    "max_runs_per_threshold",
    "member_probabilities",
    "pack_groups",
    "pack_proposals",
    "pack_ragged",
    "proposals_from_cas",
    "pseudo_labels",
    "segments_to_snippets",
    "set_compilation_cache",
    "student_t_density",
    "synthetic_videos",
    "uniform_density",
    "unpack_groups",
    "unpack_members",
    "unpack_proposals",
    "unpack_ragged",
    "unpack_ragged_members",
]
