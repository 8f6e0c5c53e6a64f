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
    ResultCode as ResultCode,
)
from jaxfuse._core.settings import (
    DEFAULT as DEFAULT,
    FusionSettings as FusionSettings,
    PRESETS as PRESETS,
    PUBLISHED as PUBLISHED,
    PUBLISHED_CLASS_THRESHOLD as PUBLISHED_CLASS_THRESHOLD,
    PUBLISHED_THRESHOLDS as PUBLISHED_THRESHOLDS,
)
from jaxfuse._core.version import VERSION

# Compilation cache
from jaxfuse._runtime.compilation_cache import (
    compilation_cache_status as compilation_cache_status,
    CompilationCacheStatus as CompilationCacheStatus,
    set_compilation_cache as set_compilation_cache,
)

# Fusion of groups: templates, densities, fitters, padded and ragged entry points
from jaxfuse._fusion.closed_forms import (
    ExponentialParameters as ExponentialParameters,
    GaussianParameters as GaussianParameters,
    LaplaceParameters as LaplaceParameters,
    UniformParameters as UniformParameters,
)
from jaxfuse._fusion.densities import (
    exponential_density as exponential_density,
    gaussian_density as gaussian_density,
    laplace_density as laplace_density,
    student_t_density as student_t_density,
    TemplateDensity as TemplateDensity,
    uniform_density as uniform_density,
)
from jaxfuse._fusion.fuse_groups import (
    compile_count as compile_count,
    fuse_exponential as fuse_exponential,
    fuse_gaussian as fuse_gaussian,
    fuse_groups as fuse_groups,
    fuse_laplace as fuse_laplace,
    fuse_student_t as fuse_student_t,
    fuse_uniform as fuse_uniform,
    FusionResult as FusionResult,
)
from jaxfuse._fusion.fuse_ragged import (
    fuse_ragged as fuse_ragged,
    RaggedFusion as RaggedFusion,
)
from jaxfuse._fusion.generic_fit import (
    fit_template as fit_template,
    FitResult as FitResult,
)
from jaxfuse._fusion.packing import (
    pack_groups as pack_groups,
    pack_ragged as pack_ragged,
    PackedGroups as PackedGroups,
    RaggedBuckets as RaggedBuckets,
    unpack_groups as unpack_groups,
    unpack_members as unpack_members,
    unpack_ragged as unpack_ragged,
    unpack_ragged_members as unpack_ragged_members,
)
from jaxfuse._fusion.student_t import (
    StudentTParameters as StudentTParameters,
)
from jaxfuse._fusion.weights import (
    member_probabilities as member_probabilities,
)

# Proposals: grouping, fusion, NMS, detection files
from jaxfuse._proposals.detection_file import (
    DetectionFileError as DetectionFileError,
    FileFusionReport as FileFusionReport,
    fuse_detection_file as fuse_detection_file,
    fuse_detections_json as fuse_detections_json,
)
from jaxfuse._proposals.fuse_proposals import (
    fuse_proposals as fuse_proposals,
    FusedProposals as FusedProposals,
)
from jaxfuse._proposals.grouping import (
    ProposalGroups as ProposalGroups,
)
from jaxfuse._proposals.grouping_entry import (
    group_proposals as group_proposals,
)
from jaxfuse._proposals.proposal_lists import (
    fuse_proposal_lists as fuse_proposal_lists,
    pack_proposals as pack_proposals,
    PaddedProposals as PaddedProposals,
    unpack_proposals as unpack_proposals,
)
from jaxfuse._proposals.sharding import (
    fuse_proposals_sharded as fuse_proposals_sharded,
    item_mesh as item_mesh,
)

# Evaluation
from jaxfuse._evaluation.activitynet_json import (
    ActivityNetData as ActivityNetData,
    evaluate_json as evaluate_json,
    load_activitynet_json as load_activitynet_json,
)
from jaxfuse._evaluation.evaluate import (
    ACTIVITYNET_THRESHOLDS as ACTIVITYNET_THRESHOLDS,
    DetectionMAP as DetectionMAP,
    Detections as Detections,
    evaluate_detections as evaluate_detections,
    GroundTruth as GroundTruth,
    THUMOS14_THRESHOLDS as THUMOS14_THRESHOLDS,
)

# CAS to proposals and detections
from jaxfuse._detection.cas_proposals import (
    CasProposals as CasProposals,
    max_runs_per_threshold as max_runs_per_threshold,
    proposals_from_cas as proposals_from_cas,
)
from jaxfuse._detection.detect import (
    detect as detect,
    detect_videos as detect_videos,
    VideoDetections as VideoDetections,
)

# Training-time pseudo labels
from jaxfuse._labels.pseudo_labels import (
    pseudo_labels as pseudo_labels,
    PseudoLabels as PseudoLabels,
)
from jaxfuse._labels.snippets import (
    segments_to_snippets as segments_to_snippets,
    SnippetLabels as SnippetLabels,
)

# Synthetic data
from jaxfuse.tools.videos import (
    synthetic_videos as synthetic_videos,
    SyntheticVideos as SyntheticVideos,
    VideoParameters as VideoParameters,
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
