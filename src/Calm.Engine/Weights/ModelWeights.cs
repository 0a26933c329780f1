using Calm.Engine.Model;

namespace Calm.Engine.Weights;

/// <summary>
/// One transformer block's tensors in a layout common to every architecture (fused checkpoint tensors are exposed
/// as row slices). D hidden, F intermediate, Hd head_dim, H heads, K kv heads, E experts.
/// </summary>
public sealed class LayerWeights
{
    public required Tensor AttnNorm { get; init; }        // [D]      input_layernorm
    public required Tensor Wq { get; init; }              // [H*Hd, D]
    public required Tensor Wk { get; init; }              // [K*Hd, D]
    public required Tensor Wv { get; init; }              // [K*Hd, D]
    public required Tensor Wo { get; init; }              // [D, H*Hd]
    public Tensor? Bq { get; init; }                      // [H*Hd]   qwen2, llama attention_bias
    public Tensor? Bk { get; init; }                      // [K*Hd]
    public Tensor? Bv { get; init; }                      // [K*Hd]
    public Tensor? Bo { get; init; }                      // [D]      llama attention_bias
    public Tensor? QNorm { get; init; }                   // [Hd]     qwen3
    public Tensor? KNorm { get; init; }                   // [Hd]     qwen3
    public required Tensor FfnNorm { get; init; }         // [D]      post_attention_layernorm
    // Dense FFN: down(act(gate(x)) * up(x))
    public Tensor? WGate { get; init; }                   // [F, D]
    public Tensor? WUp { get; init; }                     // [F, D]
    public Tensor? WDown { get; init; }                   // [D, F]
    public Tensor? BGate { get; init; }                   // [F]      llama mlp_bias
    public Tensor? BUp { get; init; }                     // [F]
    public Tensor? BDown { get; init; }                   // [D]
    // MoE FFN (mixtral)
    public Tensor? Router { get; init; }                  // [E, D]   block_sparse_moe.gate
    public Tensor[]? ExpertGate { get; init; }            // E x [F, D]  w1
    public Tensor[]? ExpertUp { get; init; }              // E x [F, D]  w3
    public Tensor[]? ExpertDown { get; init; }            // E x [D, F]  w2
}

/// <summary>All of a model's tensors, architecture-neutral.</summary>
public sealed class ModelWeights
{
    public required Tensor Embedding { get; init; }       // [V, D]   embed_tokens
    public required LayerWeights[] Layers { get; init; }
    public required Tensor FinalNorm { get; init; }       // [D]      norm
    /// <summary>Classifier [V, D]; the embedding itself when embeddings are tied.</summary>
    public required Tensor LmHead { get; init; }

    /// <summary>Every distinct tensor once (tied embedding counted once).</summary>
    public IEnumerable<Tensor> AllTensors()
    {
        var seen = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        IEnumerable<Tensor?> Each()
        {
            yield return Embedding; yield return FinalNorm; yield return LmHead;
            foreach (var l in Layers)
            {
                yield return l.AttnNorm; yield return l.Wq; yield return l.Wk; yield return l.Wv; yield return l.Wo;
                yield return l.Bq; yield return l.Bk; yield return l.Bv; yield return l.Bo; yield return l.QNorm; yield return l.KNorm;
                yield return l.FfnNorm; yield return l.WGate; yield return l.WUp; yield return l.WDown;
                yield return l.BGate; yield return l.BUp; yield return l.BDown; yield return l.Router;
                foreach (var t in l.ExpertGate ?? Array.Empty<Tensor>()) yield return t;
                foreach (var t in l.ExpertUp ?? Array.Empty<Tensor>()) yield return t;
                foreach (var t in l.ExpertDown ?? Array.Empty<Tensor>()) yield return t;
            }
        }
        foreach (var t in Each()) if (t is not null && seen.Add(t)) yield return t;
    }

    /// <summary>Bytes of all weights (each tensor once).</summary>
    public long TotalBytes => AllTensors().Sum(t => t.ByteLength);

    /// <summary>
    /// A copy with every projection matrix (q, k, v, o, gate, up, down and the experts) replaced by
    /// <paramref name="matrix"/>, the classifier by <paramref name="lmHead"/> (called once, also when it is the tied
    /// embedding), and every other tensor (embedding, norms, biases, router) by <paramref name="other"/> (default: kept).
    /// Called in the order embedding, classifier, layer by layer, final norm.
    /// </summary>
    public ModelWeights MapMatrices(Func<Tensor, Tensor> matrix, Func<Tensor, Tensor> lmHead, Func<Tensor, Tensor>? other = null)
    {
        other ??= t => t;
        Tensor? M(Tensor? t) => t is null ? null : matrix(t);
        Tensor? O(Tensor? t) => t is null ? null : other(t);
        Tensor[]? A(Tensor[]? ts) => ts?.Select(matrix).ToArray();
        var embedding = other(Embedding);
        var classifier = lmHead(LmHead);
        var layers = Layers.Select(l => new LayerWeights
        {
            AttnNorm = other(l.AttnNorm), FfnNorm = other(l.FfnNorm),
            Wq = matrix(l.Wq), Wk = matrix(l.Wk), Wv = matrix(l.Wv), Wo = matrix(l.Wo),
            Bq = O(l.Bq), Bk = O(l.Bk), Bv = O(l.Bv), Bo = O(l.Bo), QNorm = O(l.QNorm), KNorm = O(l.KNorm),
            WGate = M(l.WGate), WUp = M(l.WUp), WDown = M(l.WDown),
            BGate = O(l.BGate), BUp = O(l.BUp), BDown = O(l.BDown),
            Router = O(l.Router),
            ExpertGate = A(l.ExpertGate), ExpertUp = A(l.ExpertUp), ExpertDown = A(l.ExpertDown),
        }).ToArray();
        return new ModelWeights { Embedding = embedding, Layers = layers, FinalNorm = other(FinalNorm), LmHead = classifier };
    }
}
