using System.Diagnostics;
using System.Reflection;
using System.Security.Cryptography;
using System.Text;

namespace Calm.Engine.Cuda;

/// <summary>A compiled kernel file: a cubin for the exact architecture, or PTX when this NVRTC cannot target it.</summary>
public sealed record KernelImage(string File, string Target, byte[] Image, bool IsCubin, bool FromCache, double Milliseconds);

/// <summary>
/// The kernel sources (kernels/*.cu and the shared header, embedded in the engine) compiled with NVRTC for one
/// architecture on first use, cached on disk (key: source hash, target, NVRTC version) under the user's cache folder
/// (CALM_CACHE_DIR, else $XDG_CACHE_HOME/calm or ~/.cache/calm; %LOCALAPPDATA%\Calm\cache on Windows).
/// </summary>
public static unsafe class KernelCompiler
{
    public const string HeaderName = "common.cuh";
    private const string ResourcePrefix = "Calm.Kernels.";
    private static readonly Dictionary<string, KernelImage> s_memory = new();

    /// <summary>File name -> source text of every embedded kernel file (the headers excluded).</summary>
    public static IReadOnlyDictionary<string, string> Sources { get; } = LoadSources(out s_headers);
    private static readonly SortedDictionary<string, string> s_headers;
    /// <summary>common.cuh, the header every kernel file includes.</summary>
    public static string Header => s_headers.TryGetValue(HeaderName, out var h) ? h : "";
    /// <summary>Every kernels/*.cuh by name (common.cuh and the device code shared by several kernel files); all are
    /// given to NVRTC by name, so a kernel file may include any of them.</summary>
    public static IReadOnlyDictionary<string, string> Headers => s_headers;

    private static Dictionary<string, string> LoadSources(out SortedDictionary<string, string> headers)
    {
        var asm = typeof(KernelCompiler).Assembly;
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        headers = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var name in asm.GetManifestResourceNames().Where(n => n.StartsWith(ResourcePrefix, StringComparison.Ordinal)).Order())
        {
            using var s = asm.GetManifestResourceStream(name)!;
            var text = new StreamReader(s).ReadToEnd();
            var file = name[ResourcePrefix.Length..];
            if (file.EndsWith(".cuh", StringComparison.Ordinal)) headers[file] = text; else d[file] = text;
        }
        return d;
    }

    /// <summary>All headers as one string (names and texts) for the cache key: a change in any header recompiles.</summary>
    private static string HeadersKey => string.Join("\0", s_headers.Select(kv => kv.Key + "\0" + kv.Value));

    public static string CacheFolder
    {
        get
        {
            var over = Environment.GetEnvironmentVariable("CALM_CACHE_DIR");
            if (!string.IsNullOrWhiteSpace(over)) return Path.Combine(over, "kernels");
            if (OperatingSystem.IsWindows())
                return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData), "Calm", "cache", "kernels");
            var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            var root = !string.IsNullOrWhiteSpace(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
            return Path.Combine(root, "calm", "kernels");
        }
    }

    /// <summary>The compile target for a device of compute capability <paramref name="arch"/> (e.g. 90):
    /// sm_XX when this NVRTC supports it, else PTX for the newest compute_XX below it (the driver finishes it).</summary>
    public static (string Option, string Target, bool Cubin) TargetFor(int arch)
    {
        var archs = Nvrtc.SupportedArchs();
        if (archs.Contains(arch)) return ($"--gpu-architecture=sm_{arch}", $"sm_{arch}", true);
        var below = archs.Where(a => a <= arch).DefaultIfEmpty(-1).Max();
        if (below < 0)
            throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotAvailable,
                $"NVRTC {Nvrtc.Version.Major}.{Nvrtc.Version.Minor} cannot generate code for compute capability {arch / 10}.{arch % 10} (it supports {string.Join(", ", archs)}).", "NVRTC");
        return ($"--gpu-architecture=compute_{below}", $"compute_{below}", false);
    }

    /// <summary>Kernel files written for one architecture's own instructions (sm_90a: wgmma): compiled for the "a"
    /// target where <see cref="ArchSpecificTarget"/> allows, else compiled plainly (their kernels are then empty and
    /// their launchers do not take them).</summary>
    public static readonly IReadOnlySet<string> ArchSpecificFiles = new HashSet<string>(StringComparer.Ordinal) { "gemm_wgmma.cu" };

    /// <summary>Whether this NVRTC can build arch-specific code (sm_90a) for compute capability <paramref name="arch"/>:
    /// only 9.0, with NVRTC 12.0 or newer (11.8 has no sm_90a). CALM_NO_ARCH_SPECIFIC=1 turns it off.</summary>
    public static bool ArchSpecificTarget(int arch)
    {
        if (arch != 90 || Environment.GetEnvironmentVariable("CALM_NO_ARCH_SPECIFIC") == "1") return false;
        try { Nvrtc.EnsureLoaded(); return Nvrtc.Version.Major >= 12 && Nvrtc.SupportedArchs().Contains(90); }
        catch (CalmException) { return false; }
    }

    /// <summary>The target of <paramref name="file"/> for compute capability <paramref name="arch"/>: sm_90a for the
    /// <see cref="ArchSpecificFiles"/> where <see cref="ArchSpecificTarget"/>, else <see cref="TargetFor(int)"/>.</summary>
    public static (string Option, string Target, bool Cubin) TargetFor(int arch, string file)
        => ArchSpecificFiles.Contains(file) && ArchSpecificTarget(arch) ? ($"--gpu-architecture=sm_{arch}a", $"sm_{arch}a", true) : TargetFor(arch);

    /// <summary>The -D options every kernel file gets from kernel switches that are compile-time choices (part of the
    /// cache key, so each setting is compiled once): CALM_L2_256=0 compiles the tensor-core matvecs' and attention's
    /// weight / K loads without the L2 prefetch-size hint (kernels/common.cuh ldg_u4_stream_l2).</summary>
    public static string[] EnvironmentDefines()
        => Environment.GetEnvironmentVariable("CALM_L2_256") == "0" ? new[] { "CALM_L2_256=0" } : Array.Empty<string>();

    public static string[] Options(string archOption) => new[] { archOption, "--std=c++17", "-default-device", "--fmad=true" };

    /// <summary>Compiles (or loads from the caches) one kernel file for <paramref name="arch"/>.</summary>
    /// <param name="defines">extra -D options (e.g. one variant of a kernel file); part of the cache key</param>
    public static KernelImage Get(string file, int arch, Action<string>? verbose = null, bool useDiskCache = true, string[]? defines = null)
    {
        Nvrtc.EnsureLoaded();
        var (opt, target, cubin) = TargetFor(arch, file);
        var (vmaj, vmin) = Nvrtc.Version;
        var source = Sources.TryGetValue(file, out var s) ? s : throw new ArgumentException($"no kernel file {file}", nameof(file));
        var opts = Options(opt).Concat((defines ?? Array.Empty<string>()).Concat(EnvironmentDefines()).Select(d => "-D" + d)).ToArray();
        string hash = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(
            source + "\0" + HeadersKey + "\0" + string.Join(" ", opts) + $"\0nvrtc{vmaj}.{vmin}"))).ToLowerInvariant()[..20];
        string key = $"{Path.GetFileNameWithoutExtension(file)}-{target}-nvrtc{vmaj}.{vmin}-{hash}.{(cubin ? "cubin" : "ptx")}";
        lock (s_memory)
            if (s_memory.TryGetValue(key, out var mem)) return mem;

        var sw = Stopwatch.StartNew();
        string path = Path.Combine(CacheFolder, key);
        if (useDiskCache && File.Exists(path))
        {
            try
            {
                var bytes = File.ReadAllBytes(path);
                if (bytes.Length > 0)
                {
                    var hit = new KernelImage(file, target, bytes, cubin, true, sw.Elapsed.TotalMilliseconds);
                    verbose?.Invoke($"Kernel {file} ({target}): cache hit {path} in {hit.Milliseconds:F1} ms");
                    lock (s_memory) s_memory[key] = hit;
                    return hit;
                }
            }
            catch (IOException) { /* fall through to compile */ }
        }
        var image = CompileSource(file, source, opts, cubin, out var log);
        var result = new KernelImage(file, target, image, cubin, false, sw.Elapsed.TotalMilliseconds);
        verbose?.Invoke($"Kernel {file} ({target}): compiled with NVRTC {vmaj}.{vmin} in {result.Milliseconds:F0} ms{(log.Length > 0 ? "; log: " + log.Trim() : "")}");
        if (useDiskCache)
        {
            try
            {
                Directory.CreateDirectory(CacheFolder);
                var tmp = path + "." + Environment.ProcessId + ".tmp";
                File.WriteAllBytes(tmp, image);
                File.Move(tmp, path, overwrite: true);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                verbose?.Invoke($"Kernel cache {CacheFolder} is not writable ({e.Message}); kernels will be compiled again next time.");
            }
        }
        lock (s_memory) s_memory[key] = result;
        return result;
    }

    /// <summary>Runs NVRTC on one source with the shared header; throws Calm.KernelCompileFailed with the log.</summary>
    public static byte[] CompileSource(string file, string source, string[] options, bool cubin, out string log)
    {
        Nvrtc.EnsureLoaded();
        nint prog;
        var src = Encoding.UTF8.GetBytes(source + "\0");
        var nameB = Encoding.UTF8.GetBytes(file + "\0");
        var hdrTexts = s_headers.Values.Select(t => Encoding.UTF8.GetBytes(t + "\0")).ToArray();
        var hdrNames = s_headers.Keys.Select(n => Encoding.UTF8.GetBytes(n + "\0")).ToArray();
        var pins = hdrTexts.Concat(hdrNames).Select(b => System.Runtime.InteropServices.GCHandle.Alloc(b, System.Runtime.InteropServices.GCHandleType.Pinned)).ToArray();
        try
        {
            int nh = hdrTexts.Length;
            byte** ht = stackalloc byte*[Math.Max(nh, 1)];
            byte** hn = stackalloc byte*[Math.Max(nh, 1)];
            for (int i = 0; i < nh; i++) { ht[i] = (byte*)pins[i].AddrOfPinnedObject(); hn[i] = (byte*)pins[nh + i].AddrOfPinnedObject(); }
            fixed (byte* ps = src, pn = nameB)
                Nvrtc.Check(Nvrtc.nvrtcCreateProgram(&prog, ps, pn, nh, ht, hn), "nvrtcCreateProgram");
        }
        finally { foreach (var p in pins) p.Free(); }
        try
        {
            var optBytes = options.Select(o => Encoding.UTF8.GetBytes(o + "\0")).ToArray();
            var handles = optBytes.Select(b => System.Runtime.InteropServices.GCHandle.Alloc(b, System.Runtime.InteropServices.GCHandleType.Pinned)).ToArray();
            int r;
            try
            {
                byte** opts = stackalloc byte*[optBytes.Length];
                for (int i = 0; i < optBytes.Length; i++) opts[i] = (byte*)handles[i].AddrOfPinnedObject();
                r = Nvrtc.nvrtcCompileProgram(prog, optBytes.Length, opts);
            }
            finally { foreach (var hd in handles) hd.Free(); }
            nuint logSize;
            Nvrtc.Check(Nvrtc.nvrtcGetProgramLogSize(prog, &logSize), "nvrtcGetProgramLogSize");
            var lb = new byte[(int)logSize];
            fixed (byte* pl = lb) Nvrtc.Check(Nvrtc.nvrtcGetProgramLog(prog, pl), "nvrtcGetProgramLog");
            log = Encoding.UTF8.GetString(lb).TrimEnd('\0');
            if (r != 0)
                throw new CalmException(ErrorIds.KernelCompileFailed, CalmErrorKind.DeviceError,
                    $"NVRTC could not compile kernel {file} ({string.Join(" ", options)}):\n{log}", file);
            nuint size;
            if (cubin) Nvrtc.Check(Nvrtc.nvrtcGetCUBINSize(prog, &size), "nvrtcGetCUBINSize");
            else Nvrtc.Check(Nvrtc.nvrtcGetPTXSize(prog, &size), "nvrtcGetPTXSize");
            var image = new byte[(int)size];
            fixed (byte* pi = image)
            {
                if (cubin) Nvrtc.Check(Nvrtc.nvrtcGetCUBIN(prog, pi), "nvrtcGetCUBIN");
                else Nvrtc.Check(Nvrtc.nvrtcGetPTX(prog, pi), "nvrtcGetPTX");
            }
            return image;
        }
        finally { Nvrtc.nvrtcDestroyProgram(&prog); }
    }

    /// <summary>Compiles every kernel file for sm_<paramref name="arch"/> (the <see cref="ArchSpecificFiles"/> for
    /// sm_90a where this NVRTC can; no cache); the CI check. Returns failures.</summary>
    public static List<string> CheckAll(int arch, Action<string>? report = null)
    {
        var failures = new List<string>();
        foreach (var (file, source) in Sources)
        {
            var sw = Stopwatch.StartNew();
            try
            {
                string sm = ArchSpecificFiles.Contains(file) && ArchSpecificTarget(arch) ? $"sm_{arch}a" : $"sm_{arch}";
                var img = CompileSource(file, source, Options($"--gpu-architecture={sm}"), true, out var log);
                report?.Invoke($"ok   {file} {sm}: {img.Length:N0} bytes cubin in {sw.ElapsedMilliseconds} ms{(log.Trim().Length > 0 ? "\n" + log.Trim() : "")}");
            }
            catch (CalmException e)
            {
                failures.Add($"{file} sm_{arch}");
                report?.Invoke($"FAIL {file} sm_{arch}: {e.Message}");
            }
        }
        return failures;
    }
}
