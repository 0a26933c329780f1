using System.Reflection;
using System.Runtime.InteropServices;

namespace Calm.Engine.Cuda;

/// <summary>
/// The CUDA driver API (libcuda.so.1 / nvcuda.dll) as unmanaged function pointers resolved at first use with
/// <see cref="NativeLibrary"/> (the same calls a [LibraryImport] would make, but versioned entry points such as
/// cuMemAlloc_v2 can be probed and a missing driver becomes a clear message instead of a DllNotFoundException).
/// Every wrapper returns the raw CUresult; <see cref="CudaException.Check"/> turns failures into exceptions.
/// </summary>
internal static unsafe class Cu
{
    public const int CUDA_SUCCESS = 0;
    public const int CUDA_ERROR_OUT_OF_MEMORY = 2;
    public const int CUDA_ERROR_NO_DEVICE = 100;

    // CUdevice_attribute values used here
    public const int ATTR_MULTIPROCESSOR_COUNT = 16;
    public const int ATTR_MEMORY_CLOCK_RATE = 36;     // kHz
    public const int ATTR_GLOBAL_MEMORY_BUS_WIDTH = 37; // bits
    public const int ATTR_L2_CACHE_SIZE = 38;
    public const int ATTR_COMPUTE_CAPABILITY_MAJOR = 75;
    public const int ATTR_COMPUTE_CAPABILITY_MINOR = 76;
    public const int ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;

    public const int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
    public const int CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9;
    public const int CU_STREAM_NON_BLOCKING = 1;
    public const int CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1;
    public const int CU_EVENT_DEFAULT = 0;
    public const int CU_MEMHOSTALLOC_PORTABLE = 1;

    private static readonly object s_lock = new();
    private static bool s_tried;
    private static string? s_loadError;
    private static nint s_lib;

    public static delegate* unmanaged<uint, int> cuInit;
    public static delegate* unmanaged<int*, int> cuDriverGetVersion;
    public static delegate* unmanaged<int*, int> cuDeviceGetCount;
    public static delegate* unmanaged<int*, int, int> cuDeviceGet;
    public static delegate* unmanaged<byte*, int, int, int> cuDeviceGetName;
    public static delegate* unmanaged<int*, int, int, int> cuDeviceGetAttribute;
    public static delegate* unmanaged<nuint*, int, int> cuDeviceTotalMem;
    public static delegate* unmanaged<nint*, int, int> cuDevicePrimaryCtxRetain;
    public static delegate* unmanaged<int, int> cuDevicePrimaryCtxRelease;
    public static delegate* unmanaged<nint, int> cuCtxSetCurrent;
    public static delegate* unmanaged<int> cuCtxSynchronize;
    public static delegate* unmanaged<nuint*, nuint*, int> cuMemGetInfo;
    public static delegate* unmanaged<ulong*, nuint, int> cuMemAlloc;
    public static delegate* unmanaged<ulong, int> cuMemFree;
    public static delegate* unmanaged<ulong, void*, nuint, int> cuMemcpyHtoD;
    public static delegate* unmanaged<void*, ulong, nuint, int> cuMemcpyDtoH;
    public static delegate* unmanaged<ulong, void*, nuint, nint, int> cuMemcpyHtoDAsync;
    public static delegate* unmanaged<void*, ulong, nuint, nint, int> cuMemcpyDtoHAsync;
    public static delegate* unmanaged<ulong, ulong, nuint, nint, int> cuMemcpyDtoDAsync;
    public static delegate* unmanaged<ulong, byte, nuint, int> cuMemsetD8;
    public static delegate* unmanaged<void**, nuint, uint, int> cuMemHostAlloc;
    public static delegate* unmanaged<void*, int> cuMemFreeHost;
    public static delegate* unmanaged<nint*, void*, int> cuModuleLoadData;
    public static delegate* unmanaged<nint, int> cuModuleUnload;
    public static delegate* unmanaged<nint*, nint, byte*, int> cuModuleGetFunction;
    public static delegate* unmanaged<nint, int, int, int> cuFuncSetAttribute;
    public static delegate* unmanaged<int*, int, nint, int> cuFuncGetAttribute;
    public static delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int> cuLaunchKernel;
    /// <summary>cuLaunchKernelEx(const CUlaunchConfig*, CUfunction, void** params, void** extra); null when the driver lacks it (CUDA &lt; 12).</summary>
    public static delegate* unmanaged<LaunchConfig*, nint, void**, void**, int> cuLaunchKernelEx;
    public const int CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6;
    public const int CU_LAUNCH_ATTRIBUTE_COOPERATIVE = 2;
    /// <summary>cuOccupancyMaxActiveBlocksPerMultiprocessor(int* numBlocks, CUfunction, int blockSize, size_t dynamicSMem).</summary>
    public static delegate* unmanaged<int*, nint, int, nuint, int> cuOccupancyMaxActiveBlocksPerMultiprocessor;
    public static bool HasLaunchKernelEx => cuLaunchKernelEx != null;

    /// <summary>CUlaunchAttribute: id (4 bytes) + pad (4) + a 64-byte value union.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 72)]
    public struct LaunchAttribute
    {
        [FieldOffset(0)] public int Id;
        [FieldOffset(8)] public int Value;   // programmaticStreamSerializationAllowed
    }

    /// <summary>CUlaunchConfig (56 bytes on 64-bit).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 56)]
    public struct LaunchConfig
    {
        [FieldOffset(0)] public uint GridX;
        [FieldOffset(4)] public uint GridY;
        [FieldOffset(8)] public uint GridZ;
        [FieldOffset(12)] public uint BlockX;
        [FieldOffset(16)] public uint BlockY;
        [FieldOffset(20)] public uint BlockZ;
        [FieldOffset(24)] public uint SharedBytes;
        [FieldOffset(32)] public nint Stream;
        [FieldOffset(40)] public LaunchAttribute* Attrs;
        [FieldOffset(48)] public uint NumAttrs;
    }
    public static delegate* unmanaged<nint*, uint, int> cuStreamCreate;
    public static delegate* unmanaged<nint, int> cuStreamDestroy;
    public static delegate* unmanaged<nint, int> cuStreamSynchronize;
    public static delegate* unmanaged<nint, int, int> cuStreamBeginCapture;
    public static delegate* unmanaged<nint, nint*, int> cuStreamEndCapture;
    public static delegate* unmanaged<nint*, nint, ulong, int> cuGraphInstantiateWithFlags;
    public static delegate* unmanaged<nint, nint, int> cuGraphLaunch;
    public static delegate* unmanaged<nint, nint, void*, int> cuGraphExecUpdate; // _v2: (exec, graph, CUgraphExecUpdateResultInfo*)
    public static delegate* unmanaged<nint, int> cuGraphExecDestroy;
    public static delegate* unmanaged<nint, int> cuGraphDestroy;
    public static delegate* unmanaged<nint*, uint, int> cuEventCreate;
    public static delegate* unmanaged<nint, nint, int> cuEventRecord;
    public static delegate* unmanaged<nint, int> cuEventSynchronize;
    public static delegate* unmanaged<float*, nint, nint, int> cuEventElapsedTime;
    public static delegate* unmanaged<nint, int> cuEventDestroy;
    public static delegate* unmanaged<int, byte**, int> cuGetErrorName;
    public static delegate* unmanaged<int, byte**, int> cuGetErrorString;

    /// <summary>Library names tried for the driver, in order.</summary>
    public static string[] DriverLibraryNames => OperatingSystem.IsWindows() ? new[] { "nvcuda.dll" } : new[] { "libcuda.so.1", "libcuda.so" };

    /// <summary>Loads the driver and calls cuInit once. Returns null when usable, else why not (for messages).</summary>
    public static string? TryLoad()
    {
        lock (s_lock)
        {
            if (s_tried) return s_loadError;
            s_tried = true;
            s_loadError = LoadCore();
            return s_loadError;
        }
    }

    /// <summary>Loads the driver or throws Calm.DeviceNotAvailable saying why.</summary>
    public static void EnsureLoaded()
    {
        var why = TryLoad();
        if (why is not null)
            throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotAvailable, why + " Use -Device Cpu.", "Cuda");
    }

    private static string? LoadCore()
    {
        foreach (var name in DriverLibraryNames)
            if (NativeLibrary.TryLoad(name, out s_lib)) break;
        if (s_lib == 0)
            return $"No NVIDIA driver found ({string.Join(", ", DriverLibraryNames)} could not be loaded): this machine has no NVIDIA GPU or its driver is not installed.";
        try
        {
            cuInit = (delegate* unmanaged<uint, int>)Sym("cuInit");
            cuDriverGetVersion = (delegate* unmanaged<int*, int>)Sym("cuDriverGetVersion");
            cuDeviceGetCount = (delegate* unmanaged<int*, int>)Sym("cuDeviceGetCount");
            cuDeviceGet = (delegate* unmanaged<int*, int, int>)Sym("cuDeviceGet");
            cuDeviceGetName = (delegate* unmanaged<byte*, int, int, int>)Sym("cuDeviceGetName");
            cuDeviceGetAttribute = (delegate* unmanaged<int*, int, int, int>)Sym("cuDeviceGetAttribute");
            cuDeviceTotalMem = (delegate* unmanaged<nuint*, int, int>)Sym("cuDeviceTotalMem_v2");
            cuDevicePrimaryCtxRetain = (delegate* unmanaged<nint*, int, int>)Sym("cuDevicePrimaryCtxRetain");
            cuDevicePrimaryCtxRelease = (delegate* unmanaged<int, int>)Sym("cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease");
            cuCtxSetCurrent = (delegate* unmanaged<nint, int>)Sym("cuCtxSetCurrent");
            cuCtxSynchronize = (delegate* unmanaged<int>)Sym("cuCtxSynchronize");
            cuMemGetInfo = (delegate* unmanaged<nuint*, nuint*, int>)Sym("cuMemGetInfo_v2");
            cuMemAlloc = (delegate* unmanaged<ulong*, nuint, int>)Sym("cuMemAlloc_v2");
            cuMemFree = (delegate* unmanaged<ulong, int>)Sym("cuMemFree_v2");
            cuMemcpyHtoD = (delegate* unmanaged<ulong, void*, nuint, int>)Sym("cuMemcpyHtoD_v2");
            cuMemcpyDtoH = (delegate* unmanaged<void*, ulong, nuint, int>)Sym("cuMemcpyDtoH_v2");
            cuMemcpyHtoDAsync = (delegate* unmanaged<ulong, void*, nuint, nint, int>)Sym("cuMemcpyHtoDAsync_v2");
            cuMemcpyDtoHAsync = (delegate* unmanaged<void*, ulong, nuint, nint, int>)Sym("cuMemcpyDtoHAsync_v2");
            cuMemcpyDtoDAsync = (delegate* unmanaged<ulong, ulong, nuint, nint, int>)Sym("cuMemcpyDtoDAsync_v2");
            cuMemsetD8 = (delegate* unmanaged<ulong, byte, nuint, int>)Sym("cuMemsetD8_v2");
            cuMemHostAlloc = (delegate* unmanaged<void**, nuint, uint, int>)Sym("cuMemHostAlloc");
            cuMemFreeHost = (delegate* unmanaged<void*, int>)Sym("cuMemFreeHost");
            cuModuleLoadData = (delegate* unmanaged<nint*, void*, int>)Sym("cuModuleLoadData");
            cuModuleUnload = (delegate* unmanaged<nint, int>)Sym("cuModuleUnload");
            cuModuleGetFunction = (delegate* unmanaged<nint*, nint, byte*, int>)Sym("cuModuleGetFunction");
            cuFuncSetAttribute = (delegate* unmanaged<nint, int, int, int>)Sym("cuFuncSetAttribute");
            cuFuncGetAttribute = (delegate* unmanaged<int*, int, nint, int>)Sym("cuFuncGetAttribute");
            cuLaunchKernel = (delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int>)Sym("cuLaunchKernel");
            cuOccupancyMaxActiveBlocksPerMultiprocessor = NativeLibrary.TryGetExport(s_lib, "cuOccupancyMaxActiveBlocksPerMultiprocessor", out var occ)
                ? (delegate* unmanaged<int*, nint, int, nuint, int>)occ : null;
            cuLaunchKernelEx = NativeLibrary.TryGetExport(s_lib, "cuLaunchKernelEx", out var lkx) ? (delegate* unmanaged<LaunchConfig*, nint, void**, void**, int>)lkx : null;
            cuStreamCreate = (delegate* unmanaged<nint*, uint, int>)Sym("cuStreamCreate");
            cuStreamDestroy = (delegate* unmanaged<nint, int>)Sym("cuStreamDestroy_v2");
            cuStreamSynchronize = (delegate* unmanaged<nint, int>)Sym("cuStreamSynchronize");
            cuStreamBeginCapture = (delegate* unmanaged<nint, int, int>)Sym("cuStreamBeginCapture_v2");
            cuStreamEndCapture = (delegate* unmanaged<nint, nint*, int>)Sym("cuStreamEndCapture");
            cuGraphInstantiateWithFlags = (delegate* unmanaged<nint*, nint, ulong, int>)Sym("cuGraphInstantiateWithFlags");
            cuGraphLaunch = (delegate* unmanaged<nint, nint, int>)Sym("cuGraphLaunch");
            cuGraphExecUpdate = (delegate* unmanaged<nint, nint, void*, int>)Sym("cuGraphExecUpdate_v2");
            cuGraphExecDestroy = (delegate* unmanaged<nint, int>)Sym("cuGraphExecDestroy");
            cuGraphDestroy = (delegate* unmanaged<nint, int>)Sym("cuGraphDestroy");
            cuEventCreate = (delegate* unmanaged<nint*, uint, int>)Sym("cuEventCreate");
            cuEventRecord = (delegate* unmanaged<nint, nint, int>)Sym("cuEventRecord");
            cuEventSynchronize = (delegate* unmanaged<nint, int>)Sym("cuEventSynchronize");
            cuEventElapsedTime = (delegate* unmanaged<float*, nint, nint, int>)Sym("cuEventElapsedTime_v2", "cuEventElapsedTime");
            cuEventDestroy = (delegate* unmanaged<nint, int>)Sym("cuEventDestroy_v2");
            cuGetErrorName = (delegate* unmanaged<int, byte**, int>)Sym("cuGetErrorName");
            cuGetErrorString = (delegate* unmanaged<int, byte**, int>)Sym("cuGetErrorString");
        }
        catch (EntryPointNotFoundException e)
        {
            return $"The NVIDIA driver is too old for Calm ({e.Message}). Install a driver for CUDA 12 or newer.";
        }
        int r = cuInit(0);
        if (r == CUDA_ERROR_NO_DEVICE) return "The NVIDIA driver reports no CUDA device (CUDA_ERROR_NO_DEVICE).";
        if (r != CUDA_SUCCESS) return $"cuInit failed: {ErrorName(r)} ({ErrorString(r)}).";
        int n;
        r = cuDeviceGetCount(&n);
        if (r != CUDA_SUCCESS) return $"cuDeviceGetCount failed: {ErrorName(r)}.";
        if (n == 0) return "The NVIDIA driver reports no CUDA device.";
        return null;
    }

    private static nint Sym(params string[] names)
    {
        foreach (var n in names)
            if (NativeLibrary.TryGetExport(s_lib, n, out var p)) return p;
        throw new EntryPointNotFoundException(string.Join(" / ", names) + " is missing from the driver library");
    }

    public static string ErrorName(int code)
    {
        if (cuGetErrorName == null) return $"CUresult {code}";
        byte* p;
        return cuGetErrorName(code, &p) == 0 && p != null ? Marshal.PtrToStringAnsi((nint)p)! : $"CUresult {code}";
    }

    public static string ErrorString(int code)
    {
        if (cuGetErrorString == null) return "unknown error";
        byte* p;
        return cuGetErrorString(code, &p) == 0 && p != null ? Marshal.PtrToStringAnsi((nint)p)! : "unknown error";
    }
}

/// <summary>NVRTC, found by probing libnvrtc.so.13/.12/.11.2 (nvrtc64_*.dll on Windows), or CALM_NVRTC_PATH.</summary>
internal static unsafe class Nvrtc
{
    public const string PathVariable = "CALM_NVRTC_PATH";
    private static readonly object s_lock = new();
    private static bool s_tried;
    private static string? s_error;
    private static nint s_lib;
    public static string? LoadedFrom { get; private set; }

    public static delegate* unmanaged<int*, int*, int> nvrtcVersion;
    public static delegate* unmanaged<int*, int> nvrtcGetNumSupportedArchs;
    public static delegate* unmanaged<int*, int> nvrtcGetSupportedArchs;
    public static delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int> nvrtcCreateProgram;
    public static delegate* unmanaged<nint*, int> nvrtcDestroyProgram;
    public static delegate* unmanaged<nint, int, byte**, int> nvrtcCompileProgram;
    public static delegate* unmanaged<nint, nuint*, int> nvrtcGetProgramLogSize;
    public static delegate* unmanaged<nint, byte*, int> nvrtcGetProgramLog;
    public static delegate* unmanaged<nint, nuint*, int> nvrtcGetCUBINSize;
    public static delegate* unmanaged<nint, byte*, int> nvrtcGetCUBIN;
    public static delegate* unmanaged<nint, nuint*, int> nvrtcGetPTXSize;
    public static delegate* unmanaged<nint, byte*, int> nvrtcGetPTX;
    public static delegate* unmanaged<int, byte*> nvrtcGetErrorString;

    public static string[] CandidateNames()
    {
        var list = new List<string>();
        var over = Environment.GetEnvironmentVariable(PathVariable);
        if (!string.IsNullOrWhiteSpace(over)) list.Add(over);
        if (OperatingSystem.IsWindows())
            list.AddRange(new[] { "nvrtc64_130_0.dll", "nvrtc64_120_0.dll", "nvrtc64_112_0.dll", "nvrtc64_120_0.alt.dll" });
        else
            list.AddRange(new[] { "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so" });
        return list.ToArray();
    }

    /// <summary>Null when NVRTC is usable, else why not.</summary>
    public static string? TryLoad()
    {
        lock (s_lock)
        {
            if (s_tried) return s_error;
            s_tried = true;
            var over = Environment.GetEnvironmentVariable(PathVariable);
            foreach (var n in CandidateNames())
            {
                if (NativeLibrary.TryLoad(n, out s_lib)) { LoadedFrom = n; break; }
                if (n == over)
                    return s_error = $"{PathVariable} is set to '{over}', which could not be loaded as NVRTC. Point it at libnvrtc.so.* / nvrtc64_*.dll or unset it.";
            }
            if (s_lib == 0)
                return s_error = $"NVRTC (the CUDA runtime compiler) was not found ({string.Join(", ", CandidateNames())}). Install it (e.g. the cuda-nvrtc package, or Debian's libnvrtc11.2) or set {PathVariable} to its path.";
            try
            {
                nvrtcVersion = (delegate* unmanaged<int*, int*, int>)Sym("nvrtcVersion");
                nvrtcGetNumSupportedArchs = (delegate* unmanaged<int*, int>)Sym("nvrtcGetNumSupportedArchs");
                nvrtcGetSupportedArchs = (delegate* unmanaged<int*, int>)Sym("nvrtcGetSupportedArchs");
                nvrtcCreateProgram = (delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int>)Sym("nvrtcCreateProgram");
                nvrtcDestroyProgram = (delegate* unmanaged<nint*, int>)Sym("nvrtcDestroyProgram");
                nvrtcCompileProgram = (delegate* unmanaged<nint, int, byte**, int>)Sym("nvrtcCompileProgram");
                nvrtcGetProgramLogSize = (delegate* unmanaged<nint, nuint*, int>)Sym("nvrtcGetProgramLogSize");
                nvrtcGetProgramLog = (delegate* unmanaged<nint, byte*, int>)Sym("nvrtcGetProgramLog");
                nvrtcGetCUBINSize = (delegate* unmanaged<nint, nuint*, int>)Sym("nvrtcGetCUBINSize");
                nvrtcGetCUBIN = (delegate* unmanaged<nint, byte*, int>)Sym("nvrtcGetCUBIN");
                nvrtcGetPTXSize = (delegate* unmanaged<nint, nuint*, int>)Sym("nvrtcGetPTXSize");
                nvrtcGetPTX = (delegate* unmanaged<nint, byte*, int>)Sym("nvrtcGetPTX");
                nvrtcGetErrorString = (delegate* unmanaged<int, byte*>)Sym("nvrtcGetErrorString");
            }
            catch (EntryPointNotFoundException e)
            {
                return s_error = $"NVRTC at {LoadedFrom} is too old ({e.Message}); Calm needs NVRTC 11.2 or newer.";
            }
            return null;
        }
    }

    public static void EnsureLoaded()
    {
        var why = TryLoad();
        if (why is not null)
            throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotAvailable, why, "NVRTC");
    }

    private static nint Sym(string name) => NativeLibrary.TryGetExport(s_lib, name, out var p) ? p
        : throw new EntryPointNotFoundException(name + " is missing");

    public static (int Major, int Minor) Version
    {
        get
        {
            EnsureLoaded();
            int a, b;
            Check(nvrtcVersion(&a, &b), "nvrtcVersion");
            return (a, b);
        }
    }

    /// <summary>SM architectures (e.g. 80, 90) this NVRTC can generate code for.</summary>
    public static int[] SupportedArchs()
    {
        EnsureLoaded();
        int n;
        Check(nvrtcGetNumSupportedArchs(&n), "nvrtcGetNumSupportedArchs");
        var a = new int[n];
        fixed (int* p = a) Check(nvrtcGetSupportedArchs(p), "nvrtcGetSupportedArchs");
        return a;
    }

    public static void Check(int r, string call)
    {
        if (r == 0) return;
        var s = nvrtcGetErrorString != null ? Marshal.PtrToStringAnsi((nint)nvrtcGetErrorString(r)) : $"nvrtcResult {r}";
        throw new CudaException(call, r, s ?? $"nvrtcResult {r}", "");
    }
}
