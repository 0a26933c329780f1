using System.Runtime.CompilerServices;
using System.Numerics.Tensors;
using Calm.Engine.Model;

namespace Calm.Engine.Cpu;

/// <summary>
/// The non-matmul ops of the forward pass, in fp32, matching Hugging Face transformers' math. Each has a naive
/// double-precision twin in tests/Calm.Engine.Tests/Cpu/NaiveOps.cs. Public so the CUDA backend's tests can use them
/// as the per-op CPU reference.
/// </summary>
public static class CpuOps
{
    // ---------------------------------------------------------------- RMSNorm
    /// <summary>
    /// out[i] = x[i] * rsqrt(mean(x^2) + eps) * w[i]   (or * (1 + w[i]) when <paramref name="addOne"/>: gemma).
    /// x, out: [n]; w: [n] (fp32 copy of the norm weight). out may alias x.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> output, float eps, bool addOne)
    {
        int n = w.Length;
        float ss = TensorPrimitives.Dot(x[..n], x[..n]);
        float inv = 1f / MathF.Sqrt(ss / n + eps);
        for (int i = 0; i < n; i++)
        {
            float wi = addOne ? 1f + w[i] : w[i];
            output[i] = x[i] * inv * wi;
        }
    }

    // ---------------------------------------------------------------- RoPE
    /// <summary>
    /// Rotary inverse frequencies for one forward call, HF conventions: inv_freq_i = theta^(-2i/rot), i in [0, rot/2),
    /// adjusted by rope_scaling. <paramref name="seqLen"/> is the sequence length seen by this call (last position + 1):
    /// longrope picks short_factor when seqLen &lt;= original_max_position_embeddings, else long_factor (as transformers
    /// does per forward call). <paramref name="attentionScale"/> multiplies cos and sin (longrope), else 1.
    /// Dynamic NTK is applied only when seqLen exceeds max_position_embeddings (transformers' rule), per call.
    /// </summary>
    public static double[] RopeInvFreq(ModelConfig c, int seqLen, out double attentionScale)
    {
        int rot = c.RotaryDim;
        int half = rot / 2;
        double theta = c.RopeTheta;
        var s = c.RopeScaling;
        attentionScale = 1.0;
        if (s is { Type: RopeScalingType.Dynamic } && seqLen > c.MaxPositionEmbeddings)
        {
            // transformers _compute_dynamic_ntk_parameters: base * ((factor * L / max_pos) - (factor - 1)) ^ (dim / (dim - 2))
            theta *= Math.Pow(s.Factor * seqLen / c.MaxPositionEmbeddings - (s.Factor - 1), rot / (double)(rot - 2));
        }
        var inv = new double[half];
        for (int i = 0; i < half; i++) inv[i] = 1.0 / Math.Pow(theta, 2.0 * i / rot);
        if (s is null) return inv;
        switch (s.Type)
        {
            case RopeScalingType.Linear:
                for (int i = 0; i < half; i++) inv[i] /= s.Factor;
                break;
            case RopeScalingType.Llama3:
            {
                double orig = s.OriginalMaxPositionEmbeddings;
                double lowWavelen = orig / s.LowFreqFactor, highWavelen = orig / s.HighFreqFactor;
                for (int i = 0; i < half; i++)
                {
                    double wavelen = 2 * Math.PI / inv[i];
                    if (wavelen < highWavelen) continue;                       // high frequency: keep
                    if (wavelen > lowWavelen) { inv[i] /= s.Factor; continue; } // low frequency: scale
                    double smooth = (orig / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    inv[i] = (1 - smooth) * inv[i] / s.Factor + smooth * inv[i];
                }
                break;
            }
            case RopeScalingType.LongRope:
            {
                int orig = s.OriginalMaxPositionEmbeddings > 0 ? s.OriginalMaxPositionEmbeddings : c.MaxPositionEmbeddings;
                double factor = s.OriginalMaxPositionEmbeddings > 0 ? (double)c.MaxPositionEmbeddings / orig : s.Factor;
                var ext = seqLen > orig ? s.LongFactor : s.ShortFactor;
                if (ext is null || ext.Length != half)
                    throw new CalmException(ErrorIds.ConfigInvalid, CalmErrorKind.InvalidData,
                        $"rope_scaling longrope needs short_factor and long_factor with {half} entries (rotary dim {rot} / 2), got {ext?.Length.ToString() ?? "none"}. Fix config.json.",
                        "rope_scaling");
                for (int i = 0; i < half; i++) inv[i] = 1.0 / (ext[i] * Math.Pow(theta, 2.0 * i / rot));
                attentionScale = factor <= 1.0 ? 1.0 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(orig));
                break;
            }
        }
        return inv;
    }

    /// <summary>cos/sin tables [rot/2] for one position: angle_i = pos * inv_freq_i (double), times attentionScale.</summary>
    public static void RopeCosSin(ReadOnlySpan<double> invFreq, int pos, double attentionScale, Span<float> cos, Span<float> sin)
    {
        for (int i = 0; i < invFreq.Length; i++)
        {
            double a = pos * invFreq[i];
            cos[i] = (float)(Math.Cos(a) * attentionScale);
            sin[i] = (float)(Math.Sin(a) * attentionScale);
        }
    }

    /// <summary>
    /// Rotates one head vector in place, HF rotate_half convention: pairs (i, i + rot/2) for i &lt; rot/2, where
    /// rot = 2 * cos.Length; dims [rot, head_dim) pass through (partial rotary).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ApplyRope(Span<float> head, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = cos.Length;
        for (int i = 0; i < half; i++)
        {
            float a = head[i], b = head[i + half];
            head[i] = a * cos[i] - b * sin[i];
            head[i + half] = b * cos[i] + a * sin[i];
        }
    }

    // ---------------------------------------------------------------- activations
    public static float Silu(float x) => x / (1f + MathF.Exp(-x));

    /// <summary>gelu_pytorch_tanh.</summary>
    public static float GeluTanh(float x)
    {
        const float k = 0.7978845608028654f; // sqrt(2/pi)
        return 0.5f * x * (1f + MathF.Tanh(k * (x + 0.044715f * x * x * x)));
    }

    /// <summary>Exact gelu: 0.5 x (1 + erf(x / sqrt 2)).</summary>
    public static float Gelu(float x) => (float)(0.5 * x * (1.0 + Erf(x * 0.7071067811865476)));

    /// <summary>erf to ~1e-7 absolute (Abramowitz &amp; Stegun 7.1.26), enough for fp32.</summary>
    public static double Erf(double x)
    {
        double s = Math.Sign(x), a = Math.Abs(x);
        double t = 1.0 / (1.0 + 0.3275911 * a);
        double p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
        return s * (1.0 - p * Math.Exp(-a * a));
    }

    /// <summary>h[i] = act(g[i]) * u[i] (gated FFN), in place into g.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void GatedActivation(Span<float> g, ReadOnlySpan<float> u, Activation act)
    {
        switch (act)
        {
            case Activation.Silu: for (int i = 0; i < g.Length; i++) g[i] = Silu(g[i]) * u[i]; break;
            case Activation.GeluTanh: for (int i = 0; i < g.Length; i++) g[i] = GeluTanh(g[i]) * u[i]; break;
            case Activation.Gelu: for (int i = 0; i < g.Length; i++) g[i] = Gelu(g[i]) * u[i]; break;
            default: throw new NotSupportedException(act.ToString());
        }
    }

    // ---------------------------------------------------------------- softmax
    /// <summary>In-place numerically stable softmax (fp32).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Softmax(Span<float> x)
    {
        float max = float.NegativeInfinity;
        for (int i = 0; i < x.Length; i++) if (x[i] > max) max = x[i];
        float sum = 0f;
        for (int i = 0; i < x.Length; i++) { x[i] = MathF.Exp(x[i] - max); sum += x[i]; }
        float inv = 1f / sum;
        for (int i = 0; i < x.Length; i++) x[i] *= inv;
    }

    // ---------------------------------------------------------------- attention
    /// <summary>
    /// First key position a query at position <paramref name="pos"/> attends to. Full causal: 0. Sliding window W
    /// (mistral/mixtral, transformers' mask kv_idx &gt; q_idx - W): keys j with pos - W &lt; j &lt;= pos.
    /// The one place the window boundary is decided.
    /// </summary>
    public static int FirstVisibleKey(int pos, int? slidingWindow)
        => slidingWindow is int w ? Math.Max(0, pos - w + 1) : 0;

    /// <summary>
    /// One head of causal attention for a query at position <paramref name="pos"/>.
    /// q: [Hd]; keys/values: the cache, position j of this kv head at keys[j * kvStride .. + Hd];
    /// scores: scratch of at least pos + 1 floats; output: [Hd]. scale = 1/sqrt(Hd).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AttendHead(ReadOnlySpan<float> q, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int kvStride,
        int pos, int? slidingWindow, float scale, Span<float> scores, Span<float> output)
    {
        int hd = q.Length;
        int first = FirstVisibleKey(pos, slidingWindow);
        int count = pos - first + 1;
        var s = scores[..count];
        for (int j = 0; j < count; j++)
            s[j] = TensorPrimitives.Dot(q, keys.Slice((first + j) * kvStride, hd)) * scale;
        Softmax(s);
        var o = output[..hd];
        o.Clear();
        for (int j = 0; j < count; j++)
            TensorPrimitives.MultiplyAdd(values.Slice((first + j) * kvStride, hd), s[j], o, o);
    }

    // ---------------------------------------------------------------- MoE routing
    /// <summary>
    /// Mixtral routing: softmax over all E router logits (fp32), take the top k, renormalise the k weights to sum 1.
    /// experts/weights: [k], best first. Ties go to the lower expert index.
    /// </summary>
    public static void MoeRoute(ReadOnlySpan<float> routerLogits, int k, Span<int> experts, Span<float> weights)
    {
        int e = routerLogits.Length;
        Span<float> p = e <= 256 ? stackalloc float[e] : new float[e];
        routerLogits.CopyTo(p);
        Softmax(p);
        for (int slot = 0; slot < k; slot++)
        {
            int best = -1;
            for (int i = 0; i < e; i++)
            {
                if (p[i] < 0) continue; // taken
                if (best < 0 || p[i] > p[best]) best = i;
            }
            experts[slot] = best;
            weights[slot] = p[best];
            p[best] = -1f;
        }
        float sum = 0f;
        for (int slot = 0; slot < k; slot++) sum += weights[slot];
        for (int slot = 0; slot < k; slot++) weights[slot] /= sum;
    }
}
