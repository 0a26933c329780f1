using System.Collections;
using System.Text.Json;

namespace Calm.Engine.Templates;

/// <summary>One chat turn. <paramref name="Extra"/> adds more fields to the message dict the template sees
/// (tool_calls, reasoning_content, tool_call_id, ...); values are strings, numbers, bools, null, lists, dictionaries
/// or JsonElements.</summary>
public sealed record ChatMessage(string Role, string? Content, IReadOnlyDictionary<string, object?>? Extra = null);

/// <summary>
/// A Hugging Face chat template (Jinja2), parsed once and rendered many times the way transformers'
/// apply_chat_template(tokenize=False) does: trim_blocks, lstrip_blocks, raise_exception, strftime_now, HF's tojson,
/// loop controls. Rendering is sandboxed: templates see only plain values (no .NET objects, files, network or
/// environment) and are bounded by <see cref="TemplateLimits"/>.
/// </summary>
public sealed class ChatTemplate
{
    private readonly List<Node> _body;

    /// <summary>The template text.</summary>
    public string Source { get; }
    /// <summary>bos_token/eos_token from the model's tokenizer_config.json (when read from a folder), passed to the template.</summary>
    public string? BosToken { get; init; }
    public string? EosToken { get; init; }
    /// <summary>Where the template came from (file path), for error messages.</summary>
    public string? Origin { get; init; }
    public TemplateLimits Limits { get; init; } = TemplateLimits.Default;
    /// <summary>Clock behind strftime_now (local time by default; tests pin it).</summary>
    public Func<DateTime> Clock { get; init; } = () => DateTime.Now;

    /// <summary>A copy with other limits and/or clock (the parsed template is shared; it is immutable).</summary>
    public ChatTemplate With(TemplateLimits? limits = null, Func<DateTime>? clock = null) =>
        new(Source, _body) { BosToken = BosToken, EosToken = EosToken, Origin = Origin, Limits = limits ?? Limits, Clock = clock ?? Clock };

    private ChatTemplate(string source, List<Node> body)
    {
        Source = source;
        _body = body;
    }

    /// <summary>Parses a template; a syntax error is a CalmException Calm.TemplateError naming the line.</summary>
    public static ChatTemplate Parse(string source, string? origin = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        try
        {
            return new ChatTemplate(source, JinjaParser.Parse(source)) { Origin = origin };
        }
        catch (TemplateSyntaxError e)
        {
            throw new CalmException(ErrorIds.TemplateError, CalmErrorKind.InvalidData,
                $"Chat template{Where(origin)} has a syntax error at line {e.Line}: {e.Message}. Fix the template text (chat_template in tokenizer_config.json).",
                origin);
        }
    }

    /// <summary>
    /// Reads the chat template of a model folder: chat_template.jinja if present, else tokenizer_config.json's
    /// "chat_template" (a string, or a list of {name, template} of which <paramref name="name"/> — "default" unless
    /// given — is taken). bos_token/eos_token come from tokenizer_config.json.
    /// </summary>
    public static ChatTemplate FromModelFolder(string folder, string? name = null)
    {
        if (!Directory.Exists(folder))
            throw new CalmException(ErrorIds.PathNotFound, CalmErrorKind.ObjectNotFound, $"Model folder '{folder}' does not exist.", folder);
        string configPath = Path.Combine(folder, "tokenizer_config.json");
        string jinjaPath = Path.Combine(folder, "chat_template.jinja");
        string? bos = null, eos = null, template = null, origin = null;
        if (File.Exists(configPath))
        {
            using var doc = ReadJson(configPath);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw Invalid(configPath, "the file is not a JSON object");
            bos = TokenText(root, "bos_token");
            eos = TokenText(root, "eos_token");
            if (root.TryGetProperty("chat_template", out var ct))
            {
                origin = configPath;
                if (ct.ValueKind == JsonValueKind.String) template = ct.GetString();
                else if (ct.ValueKind == JsonValueKind.Array)
                {
                    string want = name ?? "default";
                    var names = new List<string>();
                    foreach (var item in ct.EnumerateArray())
                    {
                        if (item.ValueKind != JsonValueKind.Object || !item.TryGetProperty("name", out var n) || n.ValueKind != JsonValueKind.String
                            || !item.TryGetProperty("template", out var t) || t.ValueKind != JsonValueKind.String)
                            throw Invalid(configPath, "chat_template list entries must be objects with string 'name' and 'template'");
                        names.Add(n.GetString()!);
                        if (n.GetString() == want) template = t.GetString();
                    }
                    if (template is null)
                        throw new CalmException(ErrorIds.TemplateMissing, CalmErrorKind.ObjectNotFound,
                            $"'{configPath}' has no chat template named '{want}' (it has: {string.Join(", ", names)}). Pass one of those names.", configPath);
                }
                else if (ct.ValueKind != JsonValueKind.Null) throw Invalid(configPath, "chat_template must be a string or a list of named templates");
            }
        }
        if (File.Exists(jinjaPath) && name is null)
        {
            var info = new FileInfo(jinjaPath);
            if (info.Length > MaxFileBytes) throw Invalid(jinjaPath, $"the file is {info.Length} bytes, more than the {MaxFileBytes}-byte limit");
            template = File.ReadAllText(jinjaPath);
            origin = jinjaPath;
        }
        if (template is null)
            throw new CalmException(ErrorIds.TemplateMissing, CalmErrorKind.ObjectNotFound,
                $"Model folder '{folder}' has no chat template (neither chat_template.jinja nor a chat_template in tokenizer_config.json). Use plain prompts, or supply a template.",
                folder);
        var parsed = Parse(template, origin);
        return new ChatTemplate(parsed.Source, parsed._body) { Origin = origin, BosToken = bos, EosToken = eos };
    }

    private const long MaxFileBytes = 16 * 1024 * 1024;

    private static JsonDocument ReadJson(string path)
    {
        var info = new FileInfo(path);
        if (info.Length > MaxFileBytes) throw Invalid(path, $"the file is {info.Length} bytes, more than the {MaxFileBytes}-byte limit");
        try { return JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { MaxDepth = 256 }); }
        catch (JsonException e) { throw Invalid(path, "it is not valid JSON: " + e.Message); }
    }

    private static string? TokenText(JsonElement root, string key)
    {
        if (!root.TryGetProperty(key, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object when v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
            _ => null,
        };
    }

    private static CalmException Invalid(string path, string what) =>
        new(ErrorIds.ConfigInvalid, CalmErrorKind.InvalidData, $"Cannot read the chat template from '{path}': {what}.", path);

    private static string Where(string? origin) => origin is null ? "" : $" ('{origin}')";

    /// <summary>
    /// Renders a conversation as transformers' apply_chat_template(messages, tokenize=False, add_generation_prompt,
    /// **extra) does: variables messages, tools (none), documents (none), add_generation_prompt, bos_token, eos_token,
    /// then everything in <paramref name="extra"/> (which may override any of them; e.g. tools, enable_thinking,
    /// date_string).
    /// </summary>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?>? extra = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var vars = new Dictionary<string, JValue>(StringComparer.Ordinal)
        {
            ["messages"] = new JList(messages.Select(m => (JValue)MessageValue(m)).ToList()),
            ["tools"] = JNone.Instance,
            ["documents"] = JNone.Instance,
            ["add_generation_prompt"] = JBool.Of(addGenerationPrompt),
        };
        if (BosToken is not null) vars["bos_token"] = new JString(BosToken);
        if (EosToken is not null) vars["eos_token"] = new JString(EosToken);
        if (extra is not null)
            foreach (var (k, v) in extra) vars[k] = ToValue(v, k, 0);
        return RenderCore(vars);
    }

    /// <summary>Renders with exactly the given variables (no HF defaults).</summary>
    public string RenderWith(IReadOnlyDictionary<string, object?> variables)
    {
        var vars = new Dictionary<string, JValue>(StringComparer.Ordinal);
        foreach (var (k, v) in variables) vars[k] = ToValue(v, k, 0);
        return RenderCore(vars);
    }

    private static JDict MessageValue(ChatMessage m)
    {
        var pairs = new List<KeyValuePair<JValue, JValue>>
        {
            new(new JString("role"), new JString(m.Role ?? throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, "A chat message has no role.", "messages"))),
            new(new JString("content"), m.Content is null ? JNone.Instance : new JString(m.Content)),
        };
        if (m.Extra is not null)
            foreach (var (k, v) in m.Extra) pairs.Add(new(new JString(k), ToValue(v, k, 0)));
        return new JDict(pairs);
    }

    /// <summary>Converts caller data into template values. Only plain data kinds are accepted; nothing is reflected on.</summary>
    internal static JValue ToValue(object? o, string name, int depth)
    {
        if (depth > 64) throw BadValue(name, "nested more than 64 levels");
        switch (o)
        {
            case null: return JNone.Instance;
            case JValue j: return j;
            case string s: return new JString(s);
            case bool b: return JBool.Of(b);
            case int or long or short or sbyte or byte or ushort or uint: return new JInt(Convert.ToInt64(o, System.Globalization.CultureInfo.InvariantCulture));
            case float or double or decimal: return new JFloat(Convert.ToDouble(o, System.Globalization.CultureInfo.InvariantCulture));
            case ChatMessage m: return MessageValue(m);
            case JsonElement e: return FromJson(e, name, depth);
            case IReadOnlyDictionary<string, object?> d:
                return new JDict(d.Select(p => new KeyValuePair<JValue, JValue>(new JString(p.Key), ToValue(p.Value, name + "." + p.Key, depth + 1))).ToList());
            case IDictionary d:
            {
                var pairs = new List<KeyValuePair<JValue, JValue>>();
                foreach (DictionaryEntry de in d)
                {
                    if (de.Key is not string ks) throw BadValue(name, "dictionary keys must be strings");
                    pairs.Add(new(new JString(ks), ToValue(de.Value, name + "." + ks, depth + 1)));
                }
                return new JDict(pairs);
            }
            case IEnumerable e:
            {
                var items = new List<JValue>();
                foreach (var x in e) items.Add(ToValue(x, name + "[]", depth + 1));
                return new JList(items);
            }
            default: throw BadValue(name, $"values of type {o.GetType().Name} cannot be passed to a template (use strings, numbers, bools, null, lists or dictionaries)");
        }
    }

    private static JValue FromJson(JsonElement e, string name, int depth)
    {
        if (depth > 64) throw BadValue(name, "nested more than 64 levels");
        return e.ValueKind switch
        {
            JsonValueKind.String => new JString(e.GetString()!),
            JsonValueKind.Number => e.TryGetInt64(out var l) ? new JInt(l) : new JFloat(e.GetDouble()),
            JsonValueKind.True => JBool.True,
            JsonValueKind.False => JBool.False,
            JsonValueKind.Null or JsonValueKind.Undefined => JNone.Instance,
            JsonValueKind.Array => new JList(e.EnumerateArray().Select(x => FromJson(x, name + "[]", depth + 1)).ToList()),
            _ => new JDict(e.EnumerateObject().Select(p => new KeyValuePair<JValue, JValue>(new JString(p.Name), FromJson(p.Value, name + "." + p.Name, depth + 1))).ToList()),
        };
    }

    private static CalmException BadValue(string name, string what) =>
        new(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Template variable '{name}': {what}.", name);

    private string RenderCore(Dictionary<string, JValue> vars)
    {
        var globals = new Frame(null);
        Interpreter.AddGlobals(globals);
        var context = new Frame(globals);
        foreach (var (k, v) in vars) context.Vars[k] = v;
        var it = new Interpreter(Limits, Clock);
        string? result = null;
        Exception? error = null;
        // A private thread with a large stack: deeply nested (but within-limit) templates never overflow the caller's stack.
        var thread = new Thread(() =>
        {
            try { result = it.Render(_body, context); }
            catch (Exception e) { error = e; }
        }, 64 * 1024 * 1024) { IsBackground = true, Name = "Calm chat template" };
        thread.Start();
        thread.Join();
        return error switch
        {
            null => result!,
            TemplateRaised r => throw new CalmException(ErrorIds.TemplateError, CalmErrorKind.InvalidArgument,
                $"The model's chat template{Where(Origin)} rejected the conversation (line {it.CurrentLine}): {r.Message}", Origin),
            TemplateLimitHit l => throw new CalmException(ErrorIds.TemplateLimitExceeded, CalmErrorKind.LimitExceeded,
                $"Chat template{Where(Origin)} exceeded a limit at line {it.CurrentLine}: {l.Message}. The template is probably broken or hostile; limits are in TemplateLimits.", Origin),
            TemplateRuntimeError t => throw new CalmException(ErrorIds.TemplateError, CalmErrorKind.InvalidData,
                $"Chat template{Where(Origin)} failed at line {it.CurrentLine}: {t.Message}.", Origin),
            CalmException c => throw c,
            _ => throw new CalmException(ErrorIds.TemplateError, CalmErrorKind.InvalidData,
                $"Chat template{Where(Origin)} failed at line {it.CurrentLine}: {error.Message}.", Origin, error),
        };
    }
}
