using System.Text;
using Calm.Engine.Tokenization;

namespace Calm.Engine.Tests.Tokenization;

/// <summary>
/// The tokenizer.model fallback (SentencePiece protobuf, read by Microsoft.ML.Tokenizers): a tiny BPE model written
/// here byte by byte, with the same pieces as <see cref="HandMadeTokenizerTests"/> and scores that make SentencePiece's
/// highest-score-first merging pick the same merges, so the ids are the same hand-worked ones.
/// </summary>
public sealed class SentencePieceModelTests : IDisposable
{
    static readonly string[] Pieces = ["▁", "h", "e", "l", "o", "▁h", "ll", "▁he", "llo", "▁hello", "w", "r", "d", "▁w", "or", "▁wor", "ld", "▁world", "é"];
    static readonly string[] MergeOrder = ["▁h", "ll", "▁he", "llo", "▁hello", "▁w", "or", "▁wor", "ld", "▁world"];
    static int B(int b) => 3 + b;
    static int P(string piece) => 259 + Array.IndexOf(Pieces, piece);
    readonly string _dir = Path.Combine(Path.GetTempPath(), "calm-spm-" + Guid.NewGuid().ToString("N"));

    public SentencePieceModelTests() => Directory.CreateDirectory(_dir);
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    // protobuf writer: just what ModelProto needs
    static void Varint(List<byte> o, ulong v) { while (v >= 0x80) { o.Add((byte)(v | 0x80)); v >>= 7; } o.Add((byte)v); }
    static void Tag(List<byte> o, int field, int wire) => Varint(o, (ulong)((field << 3) | wire));
    static void Bytes(List<byte> o, int field, byte[] b) { Tag(o, field, 2); Varint(o, (ulong)b.Length); o.AddRange(b); }
    static void Int(List<byte> o, int field, long v) { Tag(o, field, 0); Varint(o, (ulong)v); }
    static void Float(List<byte> o, int field, float f) { Tag(o, field, 5); o.AddRange(BitConverter.GetBytes(f)); }

    static byte[] Piece(string text, float score, int type)
    {
        var o = new List<byte>();
        Bytes(o, 1, Encoding.UTF8.GetBytes(text)); Float(o, 2, score); Int(o, 3, type);
        return o.ToArray();
    }

    string WriteModel()
    {
        const int Normal = 1, Unknown = 2, Control = 3, Byte = 6;
        var m = new List<byte>();
        Bytes(m, 1, Piece("<unk>", 0, Unknown));
        Bytes(m, 1, Piece("<s>", 0, Control));
        Bytes(m, 1, Piece("</s>", 0, Control));
        for (int b = 0; b < 256; b++) Bytes(m, 1, Piece($"<0x{b:X2}>", 0, Byte));
        foreach (var p in Pieces)
        {
            int rank = Array.IndexOf(MergeOrder, p);
            Bytes(m, 1, Piece(p, rank < 0 ? -100f : -rank, Normal));
        }
        var trainer = new List<byte>();
        Int(trainer, 3, 2);   // model_type = BPE
        Int(trainer, 35, 1);  // byte_fallback
        Int(trainer, 40, 0); Int(trainer, 41, 1); Int(trainer, 42, 2); // unk, bos, eos ids
        Bytes(m, 2, trainer.ToArray());
        var norm = new List<byte>();
        Bytes(norm, 1, Encoding.UTF8.GetBytes("identity"));
        Int(norm, 3, 1); Int(norm, 4, 0); Int(norm, 5, 1); // add_dummy_prefix, no whitespace squeezing, escape whitespace
        Bytes(m, 3, norm.ToArray());
        string path = Path.Combine(_dir, "tokenizer.model");
        File.WriteAllBytes(path, m.ToArray());
        return path;
    }

    [Fact]
    public void FolderWithOnlyTokenizerModelLoadsThroughSentencePiece()
    {
        WriteModel();
        var t = CalmTokenizer.FromFolder(_dir);
        Assert.Equal(1, t.BosId);
        Assert.Equal([2], t.EosIds);
        Assert.Equal([1, P("▁hello"), P("▁world")], t.Encode("hello world"));
        Assert.Equal([P("▁he"), P("ll")], t.Encode("hell", addSpecialTokens: false));
        Assert.Equal([P("▁h"), P("é"), B(0xE2), B(0x82), B(0xAC)], t.Encode("hé€", addSpecialTokens: false));
        Assert.Equal("hello world hé€", t.Decode(t.Encode("hello world hé€"), skipSpecialTokens: true));
        Assert.True(t.IsSpecial(1));
        Assert.Equal(" world", t.TokenText(P("▁world")));
        var s = t.CreateStreamDecoder();
        Assert.Equal("", s.Add(B(0xE2)));
        Assert.Equal("", s.Add(B(0x82)));
        Assert.Equal("€", s.Add(B(0xAC)));
    }

    [Fact]
    public void TokenizerConfigCanTurnBosOff()
    {
        WriteModel();
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), """{"add_bos_token": false, "add_eos_token": true}""");
        var t = CalmTokenizer.FromFolder(_dir);
        Assert.Equal([P("▁hello"), 2], t.Encode("hello"));
    }
}
