using System.Text;

namespace Calm.Engine.Tokenization;

/// <summary>
/// tokenizer.json "decoder" reduced to what decides the output: each token becomes bytes (byte-level chars -> bytes;
/// or Replace/Metaspace char swaps, then &lt;0xNN&gt; -> one byte), the bytes of all tokens are fused and read as UTF-8,
/// and Strip / Metaspace remove leading chars at the start of the whole output.
/// </summary>
internal sealed class DecoderSpec
{
    public bool ByteLevel;
    public List<(string Pattern, string Content)> Replaces = new();
    public bool ByteFallback;
    /// <summary>Metaspace decoder: its replacement char, and whether the first token loses its replacement chars.</summary>
    public char? MetaspaceReplacement;
    public bool MetaspaceStripFirst;
    /// <summary>Strip decoder: at most this many leading StripChar chars are removed from the output.</summary>
    public int StripStart;
    public char StripChar = ' ';

    /// <summary>Appends the bytes of a model (non-added) token.</summary>
    public void AppendBytes(string token, bool first, List<byte> dst)
    {
        if (ByteLevel && ByteLevelMap.TryDecode(token, dst)) return;
        string t = token;
        foreach (var (p, c) in Replaces) t = t.Replace(p, c, StringComparison.Ordinal);
        if (MetaspaceReplacement is char r)
            t = first && MetaspaceStripFirst ? t.Replace(r.ToString(), "", StringComparison.Ordinal) : t.Replace(r, ' ');
        if (ByteFallback && TryByteToken(t, out byte b)) { dst.Add(b); return; }
        dst.AddRange(Encoding.UTF8.GetBytes(t));
    }

    /// <summary>"&lt;0xNN&gt;" -> NN.</summary>
    public static bool TryByteToken(string t, out byte b)
    {
        b = 0;
        return t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>'
            && byte.TryParse(t.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out b);
    }
}

/// <summary>
/// Decodes a stream of token ids into text as they arrive. <see cref="Add"/> returns only complete characters: a
/// character whose UTF-8 bytes are spread over several tokens appears once its last byte has arrived, never as
/// U+FFFD in between. <see cref="Flush"/> at the end returns what is left (an unfinished character as U+FFFD).
/// </summary>
public sealed class TokenStreamDecoder
{
    readonly CalmTokenizer _tok;
    readonly bool _skipSpecial;
    readonly Decoder _utf8 = new UTF8Encoding(false, false).GetDecoder();
    readonly List<byte> _bytes = new();
    char[] _chars = new char[64];
    bool _first = true;
    int _stripLeft;

    internal TokenStreamDecoder(CalmTokenizer tokenizer, bool skipSpecialTokens)
    {
        _tok = tokenizer;
        _skipSpecial = skipSpecialTokens;
        _stripLeft = tokenizer.Decoder.StripStart;
    }

    /// <summary>Feeds one id; returns the text that is now complete (often "", never a partial character).</summary>
    public string Add(int id)
    {
        _tok.CheckId(id);
        if (_skipSpecial && _tok.IsSpecial(id)) return "";
        _bytes.Clear();
        _tok.AppendTokenBytes(id, _first, _bytes);
        _first = false;
        return Convert(flush: false);
    }

    /// <summary>Ends the stream: returns any remaining text (bytes of an unfinished character become U+FFFD).</summary>
    public string Flush()
    {
        _bytes.Clear();
        string s = Convert(flush: true);
        _first = true;
        _stripLeft = _tok.Decoder.StripStart;
        return s;
    }

    string Convert(bool flush)
    {
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_bytes);
        int need = _utf8.GetCharCount(span, flush: false) + 8;
        if (_chars.Length < need) _chars = new char[Math.Max(need, _chars.Length * 2)];
        int n = _utf8.GetChars(span, _chars, flush);
        int start = 0;
        while (_stripLeft > 0 && start < n && _chars[start] == _tok.Decoder.StripChar) { start++; _stripLeft--; }
        if (start < n) _stripLeft = 0;
        return new string(_chars, start, n - start);
    }
}
