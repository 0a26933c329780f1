using System.Collections.Concurrent;
using System.Text;
using Microsoft.ML.Tokenizers;

namespace Calm.Engine.Tokenization;

/// <summary>
/// The BPE model of tokenizer.json ("model": {"type": "BPE"}), with Hugging Face's exact semantics: a word starts as
/// its code points (a code point missing from the vocabulary becomes its UTF-8 bytes as &lt;0xNN&gt; tokens when
/// byte_fallback is set, else the unk token, fused when fuse_unk is set); then the pair with the lowest merge rank is
/// merged, leftmost first on ties, until no ranked pair is left. ignore_merges: a word that is itself in the
/// vocabulary is one token.
/// </summary>
internal sealed class BpeModel
{
    readonly Dictionary<string, int> _vocab;
    /// <summary>(leftId &lt;&lt; 32 | rightId) -> (rank, merged id).</summary>
    readonly Dictionary<long, (int Rank, int NewId)> _merges;
    /// <summary>[256]: id of &lt;0xNN&gt;, or -1.</summary>
    readonly int[] _byteIds = new int[256];
    readonly int _unkId;
    readonly bool _byteFallback, _fuseUnk, _ignoreMerges;
    readonly string? _prefix, _suffix;
    readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    const int CacheWordMaxChars = 256, CacheMaxEntries = 200_000;

    /// <summary>
    /// The merge step through Microsoft.ML.Tokenizers' BpeTokenizer, used where it computes exactly what Hugging Face
    /// does: byte-level vocabularies (every initial symbol is one BMP char, no unk, no byte fallback, no affixes).
    /// The rest (byte fallback over code points, fused unk, ignore_merges) the library cannot express; Merge() does it.
    /// </summary>
    readonly BpeTokenizer? _library;

    public IReadOnlyDictionary<string, int> Vocab => _vocab;
    /// <summary>True when the merge step runs in Microsoft.ML.Tokenizers.</summary>
    public bool UsesLibrary => _library != null;
    public bool ByteFallback => _byteFallback;

    public BpeModel(Dictionary<string, int> vocab, List<(string A, string B)> merges, string? unkToken, bool byteFallback,
                    bool fuseUnk, bool ignoreMerges, string? continuingSubwordPrefix, string? endOfWordSuffix, string where, bool allowLibrary = true)
    {
        _vocab = vocab;
        _byteFallback = byteFallback;
        _fuseUnk = fuseUnk;
        _ignoreMerges = ignoreMerges;
        _prefix = string.IsNullOrEmpty(continuingSubwordPrefix) ? null : continuingSubwordPrefix;
        _suffix = string.IsNullOrEmpty(endOfWordSuffix) ? null : endOfWordSuffix;
        _unkId = -1;
        if (unkToken != null && !vocab.TryGetValue(unkToken, out _unkId))
            throw TokenizerLoader.Invalid(where, $"the unk_token '{unkToken}' is not in the vocabulary");
        for (int b = 0; b < 256; b++)
            _byteIds[b] = vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        _merges = new Dictionary<long, (int, int)>(merges.Count);
        int prefixLen = _prefix?.Length ?? 0;
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (a, b) = merges[rank];
            if (!vocab.TryGetValue(a, out int ia) || !vocab.TryGetValue(b, out int ib))
                throw TokenizerLoader.Invalid(where, $"merge #{rank} '{a} {b}' names a token that is not in the vocabulary");
            string merged = a + (prefixLen > 0 && b.StartsWith(_prefix!, StringComparison.Ordinal) ? b[prefixLen..] : b);
            if (!vocab.TryGetValue(merged, out int im))
                throw TokenizerLoader.Invalid(where, $"merge #{rank} '{a} {b}' makes '{merged}', which is not in the vocabulary");
            _merges.TryAdd(((long)ia << 32) | (uint)ib, (rank, im));
        }
        bool byteLevelVocab = allowLibrary && !byteFallback && _unkId < 0 && _prefix == null && _suffix == null
            && Enumerable.Range(0, 256).All(b => vocab.ContainsKey(ByteLevelMap.ByteToChar[b].ToString()))
            && merges.All(m => !m.A.Contains(' ') && !m.B.Contains(' '));
        if (byteLevelVocab)
            _library = BpeTokenizer.Create(new BpeOptions(vocab)
            {
                Merges = merges.Select(m => m.A + " " + m.B),
                ByteLevel = false, // the pre-tokenizer already mapped bytes to chars
            });
    }

    /// <summary>Appends the ids of one pre-tokenized word.</summary>
    public void EncodeWord(string word, List<int> output)
    {
        if (word.Length == 0) return;
        if (_ignoreMerges && _vocab.TryGetValue(word, out int whole)) { output.Add(whole); return; }
        if (word.Length <= CacheWordMaxChars && _cache.TryGetValue(word, out var cached)) { output.AddRange(cached); return; }
        var ids = Merge(word);
        if (word.Length <= CacheWordMaxChars && _cache.Count < CacheMaxEntries) _cache.TryAdd(word, ids);
        output.AddRange(ids);
    }

    int[] Merge(string word)
    {
        if (_library != null && IsByteLevelWord(word))
            return _library.EncodeToIds(word, considerPreTokenization: false, considerNormalization: false).ToArray();
        // Symbols: a doubly linked list over the initial pieces. id[i] = token id, prev/next = neighbours (-1 none),
        // alive[i] = false once merged into its left neighbour.
        var id = new List<int>(word.Length);
        bool lastWasUnk = false;
        int pos = 0;
        Span<byte> utf8 = stackalloc byte[4];
        while (pos < word.Length)
        {
            int len = char.IsHighSurrogate(word[pos]) && pos + 1 < word.Length && char.IsLowSurrogate(word[pos + 1]) ? 2 : 1;
            string s = word.Substring(pos, len);
            if (_prefix != null && pos > 0) s = _prefix + s;
            if (_suffix != null && pos + len == word.Length) s += _suffix;
            pos += len;
            if (_vocab.TryGetValue(s, out int tid)) { id.Add(tid); lastWasUnk = false; continue; }
            if (_byteFallback)
            {
                Rune.DecodeFromUtf16(word.AsSpan(pos - len, len), out var rune, out _);
                int n = rune.EncodeToUtf8(utf8);
                bool all = true;
                for (int k = 0; k < n; k++) all &= _byteIds[utf8[k]] >= 0;
                if (all)
                {
                    for (int k = 0; k < n; k++) id.Add(_byteIds[utf8[k]]);
                    lastWasUnk = false;
                    continue;
                }
            }
            if (_unkId >= 0)
            {
                if (!(_fuseUnk && lastWasUnk)) id.Add(_unkId);
                lastWasUnk = true;
            }
        }
        int count = id.Count;
        if (count < 2) return id.ToArray();
        var ids = id.ToArray();
        var prev = new int[count];
        var next = new int[count];
        var alive = new bool[count];
        for (int i = 0; i < count; i++) { prev[i] = i - 1; next[i] = i + 1 < count ? i + 1 : -1; alive[i] = true; }
        // Queue of candidate merges (left position, merged id), ordered by rank then position.
        var queue = new PriorityQueue<(int Pos, int NewId), long>();
        for (int i = 0; i + 1 < count; i++)
            if (_merges.TryGetValue(((long)ids[i] << 32) | (uint)ids[i + 1], out var m))
                queue.Enqueue((i, m.NewId), ((long)m.Rank << 32) | (uint)i);
        while (queue.TryDequeue(out var top, out long prio))
        {
            int p = top.Pos;
            if (!alive[p]) continue;
            int q = next[p];
            if (q < 0) continue;
            if (!_merges.TryGetValue(((long)ids[p] << 32) | (uint)ids[q], out var cur) || cur.NewId != top.NewId
                || cur.Rank != (int)(prio >> 32)) continue;
            ids[p] = cur.NewId;
            alive[q] = false;
            next[p] = next[q];
            if (next[q] >= 0) prev[next[q]] = p;
            if (prev[p] >= 0 && _merges.TryGetValue(((long)ids[prev[p]] << 32) | (uint)ids[p], out var ml))
                queue.Enqueue((prev[p], ml.NewId), ((long)ml.Rank << 32) | (uint)prev[p]);
            if (next[p] >= 0 && _merges.TryGetValue(((long)ids[p] << 32) | (uint)ids[next[p]], out var mr))
                queue.Enqueue((p, mr.NewId), ((long)mr.Rank << 32) | (uint)p);
        }
        var result = new List<int>(count);
        for (int i = 0; i >= 0; i = next[i]) result.Add(ids[i]);
        return result.ToArray();
    }

    static bool IsByteLevelWord(string word)
    {
        foreach (char c in word) if (c >= ByteLevelMap.CharToByte.Length || ByteLevelMap.CharToByte[c] < 0) return false;
        return true;
    }
}
