namespace Calm.Engine.Cuda;

/// <summary>
/// The counter-based hash behind synthetic weights, as the GPU fill kernel computes it (kernels/fill.cu):
/// tensorId = FNV-1a 64 of the HF tensor name (UTF-8); key = splitmix64((seed &lt;&lt; 32) ^ tensorId);
/// u = splitmix64(key + i) &gt;&gt; 40; x = ((u + 0.5) / 2^24) * 2 - 1; value = x * scale + offset (f32).
/// </summary>
public static class SyntheticHash
{
    public static ulong Fnv1a64(string name)
    {
        ulong h = 0xcbf29ce484222325UL;
        foreach (var b in System.Text.Encoding.UTF8.GetBytes(name)) { h ^= b; h *= 0x100000001b3UL; }
        return h;
    }

    public static ulong SplitMix64(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public static ulong Key(int seed, string tensorName) => SplitMix64(((ulong)(uint)seed << 32) ^ Fnv1a64(tensorName));

    public static float Value(ulong key, long i, float scale, float offset)
    {
        ulong u = SplitMix64(key + (ulong)i) >> 40;
        float x = (float)((u + 0.5) / 16777216.0 * 2.0 - 1.0);
        return x * scale + offset;
    }
}
