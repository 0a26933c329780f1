namespace Calm.Engine.Cuda;

/// <summary>
/// The environment variables that switch kernel variants (README's table). They are read when a model is made, so the
/// CUDA backend records the ones set at that moment (<see cref="CudaBackend.KernelSwitches"/>) and every measurement
/// and model object carries them: a benchmark sweep exported to CSV says which variant each row ran.
/// </summary>
public static class KernelSwitches
{
    /// <summary>Every kernel switch, in the README's order. Variables that are not kernel choices (CALM_CACHE_DIR,
    /// CALM_NVRTC_PATH and the test harness's) are not here.</summary>
    public static readonly IReadOnlyList<string> Names = new[]
    {
        "CALM_DECODE", "CALM_FUSE_PAIRS", "CALM_PDL", "CALM_QUANT_PDL", "CALM_QUANT_CLAMP", "CALM_QUANT_TC", "CALM_QUANT_GLU", "CALM_FOLD_NORM",
        "CALM_QUANT_TC_VARIANT", "CALM_QUANT_TC_INT4", "CALM_QUANT_TC_CAPPED", "CALM_MV_DEEP", "CALM_FP8_XS", "CALM_INT4_XS", "CALM_GEMM_VARIANT", "CALM_GEMM_WN",
        "CALM_GEMM_V4N", "CALM_GEMM_K", "CALM_GEMM_TILE", "CALM_NO_ARCH_SPECIFIC", "CALM_PREFILL", "CALM_PREFILL_ATT",
        "CALM_PREFILL_FUSE", "CALM_PREFILL_ROWS", "CALM_ATT_FP8_WIDE", "CALM_ATT_BLOCKS", "CALM_FUSE_NORM", "CALM_ATT_ASYNC",
        "CALM_PDL_PREFETCH", "CALM_ATT_NEXT", "CALM_MV_EARLY", "CALM_ATT_PREFETCH", "CALM_CARVEOUT", "CALM_ATT_F16_WIDE",
        "CALM_MOE_GATE", "CALM_MOE_PDL", "CALM_L2_256", "CALM_QUANT_TILE",
    };

    /// <summary>"NAME=value" of every switch set (non-empty) in this process, ';'-separated in <see cref="Names"/> order;
    /// "" when none is set (every kernel at its default). <paramref name="lookup"/>: where values come from (tests);
    /// the process environment by default.</summary>
    public static string Describe(Func<string, string?>? lookup = null)
        => string.Join(";", Names.Select(n => (Name: n, Value: (lookup ?? Environment.GetEnvironmentVariable)(n)))
                                 .Where(p => !string.IsNullOrEmpty(p.Value))
                                 .Select(p => $"{p.Name}={p.Value}"));
}
