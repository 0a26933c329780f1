using Calm.Engine.Model;

namespace Calm.Engine.Cuda;

/// <summary>
/// RoPE tables computed on the host: cos/sin [positions, rotDim/2] f32 with HF's conventions (inv_freq in f32 as
/// transformers computes it; rope_scaling linear, llama3, longrope (short factors up to the original context, long
/// beyond, with its attention factor); dynamic NTK is identity within max_position_embeddings).
/// </summary>
public static class RopeTable
{
    public static float[] InvFreq(ModelConfig c, int maxContext)
    {
        int rot = c.RotaryDim, half = rot / 2;
        var f = new float[half];
        var rs = c.RopeScaling;
        for (int i = 0; i < half; i++)
        {
            float expo = (float)(2 * i) / rot;
            float inv = 1.0f / MathF.Pow((float)c.RopeTheta, expo);
            if (rs is { Type: RopeScalingType.LongRope })
            {
                var factors = maxContext > rs.OriginalMaxPositionEmbeddings && rs.LongFactor is { } lf ? lf : rs.ShortFactor;
                if (factors is { Length: > 0 }) inv = 1.0f / ((float)factors[Math.Min(i, factors.Length - 1)] * MathF.Pow((float)c.RopeTheta, expo));
            }
            f[i] = inv;
        }
        if (rs is { Type: RopeScalingType.Linear } && rs.Factor > 0)
            for (int i = 0; i < half; i++) f[i] = (float)(f[i] / rs.Factor);
        else if (rs is { Type: RopeScalingType.Llama3 })
        {
            double orig = rs.OriginalMaxPositionEmbeddings, lowW = orig / rs.LowFreqFactor, highW = orig / rs.HighFreqFactor;
            for (int i = 0; i < half; i++)
            {
                double wl = 2 * Math.PI / f[i];
                if (wl < highW) continue;
                if (wl > lowW) { f[i] = (float)(f[i] / rs.Factor); continue; }
                double smooth = (orig / wl - rs.LowFreqFactor) / (rs.HighFreqFactor - rs.LowFreqFactor);
                f[i] = (float)((1 - smooth) * f[i] / rs.Factor + smooth * f[i]);
            }
        }
        return f;
    }

    /// <summary>Multiplier on cos and sin (longrope attention factor), else 1.</summary>
    public static float AttentionFactor(ModelConfig c)
    {
        var rs = c.RopeScaling;
        if (rs is not { Type: RopeScalingType.LongRope } || rs.OriginalMaxPositionEmbeddings <= 0) return 1f;
        double factor = (double)c.MaxPositionEmbeddings / rs.OriginalMaxPositionEmbeddings;
        return factor <= 1 ? 1f : (float)Math.Sqrt(1 + Math.Log(factor) / Math.Log(rs.OriginalMaxPositionEmbeddings));
    }

    /// <summary>cos, sin [positions, rotDim/2]: angle = f32(pos * inv_freq[i]).</summary>
    public static (float[] Cos, float[] Sin) Build(ModelConfig c, int positions)
    {
        var inv = InvFreq(c, positions);
        float m = AttentionFactor(c);
        int half = inv.Length;
        var cos = new float[(long)positions * half];
        var sin = new float[(long)positions * half];
        for (int p = 0; p < positions; p++)
            for (int i = 0; i < half; i++)
            {
                float a = (float)p * inv[i];
                cos[(long)p * half + i] = (float)Math.Cos(a) * m;
                sin[(long)p * half + i] = (float)Math.Sin(a) * m;
            }
        return (cos, sin);
    }
}
