using Calm.Engine.Cuda;
using Calm.Engine.Model;

namespace Calm.Engine.Tests.Cuda;

/// <summary>CALM_CARVEOUT (<see cref="CudaKernels.Carveout"/>): which values it takes, and on the GPU that every decode
/// kernel of both kernel sets then prefers that carveout while a matvec's results stay bit for bit the same.</summary>
public class CarveoutSwitchTests
{
    [Theory]
    [InlineData(null, null)]
    [InlineData("", null)]
    [InlineData("0", 0)]
    [InlineData("50", 50)]
    [InlineData(" 100 ", 100)]
    [InlineData("L1", 0)]
    [InlineData("shared", 100)]
    [InlineData("101", null)]   // out of range: the driver's choice, as with the other switches' unknown values
    [InlineData("-1", null)]
    [InlineData("max", null)]
    public void CarveoutSwitchValues(string? value, int? want)
        => Assert.Equal(want, CudaKernel.CarveoutFromEnvironment(n => n == "CALM_CARVEOUT" ? value : null));
}

[Trait("Category", "GPU")]
[Collection("GPU")]
public class CarveoutGpuTests
{
    [Fact]
    public void EveryKernelPrefersTheCarveoutAndResultsStayTheSame()
    {
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) Assert.Skip("No usable CUDA device: " + why);
        int arch = CudaDeviceInfo.List()[0].Arch;
        using var ctx = CudaContext.Acquire(0);
        using var plain = new CudaKernels(ctx, arch, carveout: null);
        using var set = new CudaKernels(ctx, arch, carveout: 25);
        using var s = new CudaStream(ctx);
        Assert.Null(plain.Carveout);
        Assert.Equal(25, set.Carveout);
        Assert.NotEmpty(set.Kernels);
        foreach (var (name, kern) in set.Kernels) Assert.True(kern.PreferredCarveout == 25, $"{name}: carveout {kern.PreferredCarveout}");
        if (arch >= 80)
        {
            using var q = new CudaQuantKernels(ctx, arch, carveout: 100);
            foreach (var (name, kern) in q.Kernels) Assert.True(kern.PreferredCarveout == 100, $"{name}: carveout {kern.PreferredCarveout}");
        }
        var r = Gpu.Rng();
        const int rows = 300, cols = 4096;
        var (wb, _) = Gpu.RandHalf(r, rows * cols, DType.BF16, 0.1f);
        var x = Gpu.RandF(r, cols);
        using var W = Gpu.Up(ctx, wb); using var X = Gpu.Up(ctx, x); using var Y0 = Gpu.Zeros(ctx, rows * 4L); using var Y1 = Gpu.Zeros(ctx, rows * 4L);
        plain.Matvec(s, DType.BF16, W.Ptr, X.Ptr, Y0.Ptr, 0, rows, cols, false);
        set.Matvec(s, DType.BF16, W.Ptr, X.Ptr, Y1.Ptr, 0, rows, cols, false);
        s.Synchronize();
        var a = Y0.ToArray<float>(rows);
        Assert.Contains(a, v => v != 0f);
        Assert.Equal(a, Y1.ToArray<float>(rows));
    }
}
