using System.Collections.Concurrent;
using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.Session;

namespace Calm.PowerShell;

/// <summary>
/// Base of every Calm cmdlet: a CancellationTokenSource cancelled by Ctrl+C (StopProcessing); CalmException mapped to
/// an ErrorRecord with the exception's ErrorId; anything unexpected becomes Calm.InternalError (never a stack trace);
/// long engine work runs on a worker thread while this thread writes its progress, verbose lines and warnings.
/// </summary>
public abstract class CalmCmdlet : PSCmdlet, IDisposable
{
    private readonly CancellationTokenSource _cts = new();

    /// <summary>Cancelled when the user presses Ctrl+C (or the pipeline is stopped).</summary>
    protected CancellationToken CancellationToken => _cts.Token;

    protected virtual void Begin() { }
    protected virtual void Process() { }
    protected virtual void End() { }

    protected sealed override void BeginProcessing() => Guard(Begin);
    protected sealed override void ProcessRecord() => Guard(Process);
    protected sealed override void EndProcessing() => Guard(End);

    protected override void StopProcessing()
    {
        try { _cts.Cancel(); } catch (ObjectDisposedException) { }
    }

    public void Dispose()
    {
        _cts.Dispose();
        GC.SuppressFinalize(this);
    }

    private void Guard(Action step)
    {
        try { step(); }
        // PowerShell's own exceptions (a stopped pipeline, a downstream cmdlet's terminating error) pass through.
        catch (RuntimeException) { throw; }
        catch (CalmException ex) when (Stopping && ex.ErrorId == ErrorIds.Cancelled) { throw new PipelineStoppedException(); }
        catch (OperationCanceledException) when (Stopping) { throw new PipelineStoppedException(); }
        catch (CalmException ex) { ThrowTerminatingError(CalmErrors.FromCalm(ex)); }
        catch (Exception ex) { ThrowTerminatingError(CalmErrors.Internal(ex)); }
    }

    /// <summary>A non-terminating error for one item (the cmdlet goes on with the next).</summary>
    protected void WriteCalmError(CalmException ex, object? target = null) => WriteError(CalmErrors.FromCalm(ex, target));

    /// <summary>The engine model for -Model: the given one, or the session's default (the last loaded).</summary>
    protected static LoadedModel ResolveModel(CalmModel? model)
        => model is null ? CalmSession.Shared.Resolve(null) : model.Resolve();

    /// <summary>
    /// Runs <paramref name="work"/> on a worker thread and, on this (the pipeline) thread, writes what it reports:
    /// Write-Progress, Write-Verbose, Write-Warning. Ctrl+C cancels the token; if the work does not stop within a few
    /// seconds the cmdlet returns anyway and whatever the work still produces is disposed when it finishes.
    /// </summary>
    protected T RunWithProgress<T>(string activity, Func<Reporter, CancellationToken, T> work)
    {
        int activityId = Math.Abs(GetHashCode() % 10000) + 1;
        using var queue = new BlockingCollection<Action>();
        var reporter = new Reporter(queue, this, activityId, activity);
        int abandoned = 0;
        var task = Task.Factory.StartNew(() => work(reporter, _cts.Token), CancellationToken.None,
            TaskCreationOptions.LongRunning, TaskScheduler.Default);
        _ = task.ContinueWith(t =>
        {
            reporter.Close();
            // Nobody will take the result: free it.
            if (Volatile.Read(ref abandoned) != 0 && t.Status == TaskStatus.RanToCompletion && t.Result is IDisposable d) d.Dispose();
        }, TaskScheduler.Default);

        var stopAt = DateTime.MaxValue;
        try
        {
            while (!task.IsCompleted || queue.Count > 0)
            {
                if (queue.TryTake(out var write, 50)) write();
                if (Stopping)
                {
                    if (stopAt == DateTime.MaxValue) stopAt = DateTime.UtcNow.AddSeconds(5);
                    else if (DateTime.UtcNow > stopAt) throw new PipelineStoppedException();
                }
            }
            WriteProgress(new ProgressRecord(activityId, activity, "Done") { RecordType = ProgressRecordType.Completed });
            return task.GetAwaiter().GetResult();
        }
        catch
        {
            if (!task.IsCompleted) Volatile.Write(ref abandoned, 1);
            throw;
        }
    }

    /// <summary>What engine work running on a worker thread hands to the pipeline thread (thread-safe).</summary>
    protected sealed class Reporter : IProgress<LoadProgress>
    {
        private readonly BlockingCollection<Action> _queue;
        private readonly CalmCmdlet _owner;
        private readonly int _id;
        private readonly string _activity;

        internal Reporter(BlockingCollection<Action> queue, CalmCmdlet owner, int id, string activity)
        {
            _queue = queue; _owner = owner; _id = id; _activity = activity;
        }

        private void Post(Action a)
        {
            try { _queue.TryAdd(a); }
            catch (InvalidOperationException) { }  // the cmdlet stopped waiting (also ObjectDisposedException)
        }

        internal void Close()
        {
            try { _queue.CompleteAdding(); } catch (ObjectDisposedException) { }
        }

        public void Report(LoadProgress value) => Post(() => _owner.WriteProgress(
            new ProgressRecord(_id, string.IsNullOrEmpty(value.Activity) ? _activity : value.Activity,
                string.IsNullOrEmpty(value.Status) ? "..." : value.Status)
            {
                PercentComplete = value.Fraction < 0 ? -1 : (int)Math.Clamp(value.Fraction * 100, 0, 100),
            }));

        public void Verbose(string text) => Post(() => _owner.WriteVerbose(text));
        public void Warning(string text) => Post(() => _owner.WriteWarning(text));
    }
}
