"""The workbench's words in English and Japanese: every label, message and grid title, one catalogue.

Each key maps to ``(English, Japanese)``; ``{name}`` placeholders are filled by ``text``. The Japanese follows
the words the founding tutorial's users know (階層, 重み, 固定 for "Fix", 重要/不要/不明 for the analyzer's
classes, 加算/減算 for Add/Sub). A test checks both languages have every key with the same placeholders.

Example:
    >>> text("ja", "tab.sheet")
    'シート'
    >>> pick_language("ja,en-US;q=0.8,en;q=0.6")
    'ja'
    >>> text("en", "msg.fixed", block="IN05", value="0")
    'IN05 fixed at 0'
"""

from __future__ import annotations

import re
import string

LANGUAGES = ("en", "ja")
DEFAULT_LANGUAGE = "en"
LANGUAGE_NAMES = {"en": "English", "ja": "日本語"}

# key: (English, Japanese)
MESSAGES: dict[str, tuple[str, str]] = {
    # page
    "app.title": ("lbw workbench", "lbw ワークベンチ"),
    "app.subtitle": (
        "Per-block LoRA tuning: analyze, fix blocks on the sheet by clicking grid cells, bake and share.",
        "LoRA の階層別調整: 分析し、グリッドのセルをクリックしてシートの層を固定し、焼き込んで配布します。",
    ),
    "app.language": ("Language", "言語"),
    "app.project": ("Project", "プロジェクト"),
    "app.no_project": (
        "No project yet: create one on the Project tab.",
        "プロジェクトがありません。「プロジェクト」タブで作成してください。",
    ),
    "app.font_missing": (
        "No CJK font on the server: Japanese text in grids draws as boxes. {hint}",
        "サーバーに日本語フォントがありません。グリッドの日本語が豆腐(□)になります。{hint}",
    ),
    "app.reload": ("Reload", "再読み込み"),
    # tabs
    "tab.project": ("Project", "プロジェクト"),
    "tab.analyze": ("Analyze", "分析"),
    "tab.sheet": ("Sheet", "シート"),
    "tab.plot": ("Plot", "プロット"),
    "tab.history": ("History", "履歴"),
    "tab.bake": ("Bake & share", "焼き込みと配布"),
    # project tab
    "project.pick": ("Project", "プロジェクト"),
    "project.new_name": ("New project name", "新しいプロジェクト名"),
    "project.create": ("Create project", "プロジェクトを作成"),
    "project.demo": ("Open the demo project", "デモプロジェクトを開く"),
    "project.lora_folder": ("LoRA", "LoRA"),
    "project.loras_table": ("LoRAs in the LoRA folders", "LoRA フォルダ内の LoRA"),
    "project.refresh": ("Refresh list", "一覧を更新"),
    "project.col.file": ("File", "ファイル"),
    "project.col.arch": ("Architecture", "アーキテクチャ"),
    "project.col.layout": ("Layout", "レイアウト"),
    "project.col.rank": ("Rank", "ランク"),
    "project.col.size": ("Size", "サイズ"),
    "project.col.kinds": ("Adapter", "種類"),
    "project.model": ("Model", "モデル"),
    "project.backend": ("Backend", "バックエンド"),
    "project.url": ("Server URL (a1111 / comfyui)", "サーバー URL (a1111 / comfyui)"),
    "project.test": ("Test connection", "接続テスト"),
    "project.settings": ("Render settings", "生成設定"),
    "project.prompt": ("Prompt", "プロンプト"),
    "project.negative": ("Negative prompt", "ネガティブプロンプト"),
    "project.seeds": ("Seeds (comma separated)", "シード (カンマ区切り)"),
    "project.width": ("Width", "幅"),
    "project.height": ("Height", "高さ"),
    "project.steps": ("Steps", "ステップ数"),
    "project.cfg": ("CFG scale", "CFG スケール"),
    "project.sampler": ("Sampler", "サンプラー"),
    "project.clip_skip": ("Clip skip", "Clip skip"),
    "project.strength": ("LoRA strength", "LoRA 強度"),
    "project.te_strength": ("Text encoder strength (empty: same)", "テキストエンコーダー強度 (空欄: 同じ)"),
    "project.roi": ("Region of interest x0,y0,x1,y1 (optional)", "注目領域 x0,y0,x1,y1 (任意)"),
    "project.save": ("Save settings", "設定を保存"),
    "project.share_chart": ("Per-block ‖ΔW‖ share of the LoRA", "LoRA の層別 ‖ΔW‖ の割合"),
    "project.share_axis": ("share of ‖ΔW‖ (%)", "‖ΔW‖ の割合 (%)"),
    "project.block": ("Block", "層"),
    # analyze tab
    "analyze.run": ("Run the Effective Block Analyzer", "Effective Block Analyzer を実行"),
    "analyze.probe": ("Probe weight (each block lowered to)", "調べる重み (各層をこの値に下げる)"),
    "analyze.threshold": ("Pixel threshold", "ピクセルしきい値"),
    "analyze.important": ("Important at Diff % ≥", "重要: 変更量 % ≥"),
    "analyze.unneeded": ("Unneeded below Diff %", "不要: 変更量 % <"),
    "analyze.table": ("Blocks ranked by change", "変更量の順の層"),
    "analyze.col.rank": ("#", "順位"),
    "analyze.col.diff": ("Diff %", "変更量 %"),
    "analyze.col.roi": ("Region Diff %", "領域の変更量 %"),
    "analyze.col.class": ("Class", "分類"),
    "analyze.images": ("Diff and heatmap of a block", "層の差分画像とヒートマップ"),
    "analyze.grid": ("Analyzer grid", "分析グリッド"),
    "analyze.start_sheet": ("Start the sheet from this", "この結果からシートを始める"),
    "analyze.no_change": (
        "No block changed the image: nothing to suggest. Check the prompt, the LoRA and its strength.",
        "どの層も画像を変えませんでした。提案はありません。プロンプト、LoRA、強度を確認してください。",
    ),
    "analyze.none": ("No analysis yet: run the analyzer.", "分析はまだありません。実行してください。"),
    "class.important": ("important", "重要"),
    "class.unneeded": ("unneeded", "不要"),
    "class.unclear": ("unclear", "不明"),
    # sheet tab
    "sheet.table": ("The Plot Helper sheet", "Plot Helper シート"),
    "sheet.col.id": ("ID", "ID"),
    "sheet.col.weight": ("Weight", "重み"),
    "sheet.col.fix": ("Fix", "固定"),
    "sheet.col.share": ("‖ΔW‖ %", "‖ΔW‖ %"),
    "sheet.col.diff": ("Analyzer Diff %", "分析の変更量 %"),
    "sheet.col.hint": ("Hint", "ヒント"),
    "sheet.hint_row": ("Hint row", "ヒント行"),
    "sheet.step": ("AddSubValue (step)", "AddSubValue (増減値)"),
    "sheet.lower": ("Lower bound (empty: none)", "下限 (空欄: なし)"),
    "sheet.upper": ("Upper bound (empty: none)", "上限 (空欄: なし)"),
    "sheet.mode": ("Mode", "モード"),
    "sheet.name": ("Name (the LBW tag)", "NAME (LBW のタグ)"),
    "sheet.apply": ("Apply table edits", "表の編集を反映"),
    "sheet.status": ("Status", "状態"),
    "sheet.import": (
        "Import a sheet TOML file (replaces the sheet)",
        "シートの TOML ファイルを読み込む (シートを置き換え)",
    ),
    "sheet.outputs": ("Outputs to paste into the web UI", "WebUI に貼り付ける出力"),
    "sheet.weight": ("WEIGHT", "WEIGHT"),
    "sheet.presets": ("{mode} presets (Weights setting)", "{mode} プリセット (Weights setting)"),
    "sheet.prompt_sr": ("{mode} Prompt S/R", "{mode} Prompt S/R"),
    "sheet.eba_blocks": ("EBA blocks (unfixed)", "EBA の層 (未固定)"),
    "sheet.sdscripts": ("sd-scripts arguments", "sd-scripts の引数"),
    "sheet.prompt_tag": ("Prompt tag", "プロンプトのタグ"),
    "sheet.done": ("All blocks fixed: the sheet is finished.", "すべての層を固定しました。シートは完成です。"),
    "sheet.unfixed": ("{count} blocks not fixed yet", "未固定の層: {count}"),
    "mode.sub": ("Sub", "Sub (減算)"),
    "mode.add": ("Add", "Add (加算)"),
    "mode.subadd": ("SubAdd", "SubAdd (減算と加算)"),
    "mode.addsub": ("AddSub", "AddSub (加算と減算)"),
    # the Sheet tab's Auto section (lbw tune)
    "tune.title": ("Auto: tune the weights unattended (lbw tune)", "自動調整: 重みを自動で調整 (lbw tune)"),
    "tune.intro": (
        "Keeps the LoRA's look inside the keep region and removes its side effects outside it, lowering as little "
        "of the LoRA as needed. Every round is an iteration on the History tab and every decision says why: go "
        "back to any iteration there and continue by hand. Cancel keeps what was done; Auto with the same options "
        "continues.",
        "残す領域の中では LoRA の効果を保ち、領域の外の副作用を取り除きます。LoRA を下げるのは必要な分だけです。"
        "各ラウンドは「履歴」タブのイテレーションになり、各決定には理由が記録されます。履歴から好きな"
        "イテレーションに戻して手作業で続けられます。中止しても結果は残り、同じ設定で「自動調整」を押すと"
        "続きから再開します。",
    ),
    "tune.keep_box": (
        "Keep region x0,y0,x1,y1 (fractions or pixels; empty: the project's region)",
        "残す領域 x0,y0,x1,y1 (割合またはピクセル。空欄: プロジェクトの注目領域)",
    ),
    "tune.mask.title": ("Draw the keep region (a mask instead of the box)", "残す領域を描く (枠の代わりにマスク)"),
    "tune.mask.help": (
        "Paint the part of the image the LoRA is for (e.g. the face) over the cell with the brush, then press "
        "**Use this mask**. Painted pixels are the keep region; side effects are measured everywhere else. The "
        "mask is saved in the project's folder and the tune copies it.",
        "LoRA を効かせたい部分 (顔など) をブラシでセルの上に塗り、**このマスクを使う** を押してください。"
        "塗ったピクセルが残す領域になり、それ以外のすべてで副作用を測ります。マスクはプロジェクトのフォルダに"
        "保存され、調整はその写しを使います。",
    ),
    "tune.mask.editor": ("Keep region: paint on the latest cell", "残す領域: 最新のセルの上に塗る"),
    "tune.mask.save": ("Use this mask", "このマスクを使う"),
    "tune.mask.use": ("Keep region = the drawn mask (not the box)", "残す領域 = 描いたマスク (枠ではなく)"),
    "tune.mask.saved": ("Drawn mask saved: {kept} of {total} pixels kept.",
                        "描いたマスクを保存しました: {total} ピクセル中 {kept} ピクセルを残します。"),
    "tune.mask.current": ("Drawn mask: {kept} of {total} pixels kept.",
                          "描いたマスク: {total} ピクセル中 {kept} ピクセルを残します。"),
    "tune.mask.none": ("No drawn mask yet.", "描いたマスクはまだありません。"),
    "tune.mask.missing": ("no drawn mask: paint the keep region and press Use this mask, or untick the drawn mask",
                          "描いたマスクがありません: 残す領域を塗って「このマスクを使う」を押すか、マスクの"
                          "チェックを外してください"),
    "tune.budget": ("Budget (cells to render at most)", "予算 (生成するセル数の上限)"),
    "tune.threshold": ("Least effect kept (0 to 1)", "残す効果の下限 (0〜1)"),
    "tune.strategy": ("Strategy", "方式"),
    "tune.held_out": (
        "Held-out seeds, never tuned on (empty: the two after the largest seed; - for none)",
        "検証用シード (調整には使いません。空欄: 最大のシードの次の 2 つ、- でなし)",
    ),
    "tune.restart": ("Start a new tune (do not continue the last one)", "新しく調整を始める (前回の続きにしない)"),
    "tune.run": ("Auto", "自動調整"),
    "tune.row.tutorial": ("Tutorial's loop", "チュートリアルの手順"),
    "tune.row.search": ("Search (TPE)", "探索 (TPE)"),
    "tune.row.both": ("Both", "両方"),
    "tune.row.random": ("Random search", "ランダム探索"),
    "tune.row.ALL": ("ALL (the whole LoRA)", "ALL (LoRA そのまま)"),
    "tune.row.OFF": ("LoRA off", "LoRA なし"),
    "tune.phase.start": ("starting", "開始中"),
    "tune.phase.references": ("references (ALL, LoRA off)", "基準 (ALL と LoRA なし)"),
    "tune.phase.tutorial": ("tutorial's loop", "チュートリアルの手順"),
    "tune.phase.search": ("search", "探索"),
    "tune.phase.evaluation": ("evaluation", "評価"),
    "tune.progress": (
        "{phase}: {cells}/{budget} cells, {elapsed} s elapsed, at most about {eta} s left",
        "{phase}: {cells}/{budget} セル、経過 {elapsed} 秒、残り最大約 {eta} 秒",
    ),
    "tune.best": ("best so far: effect kept {effect}, side effect left {side}",
                  "現時点の最良: 残った効果 {effect}、残った副作用 {side}"),
    "tune.done_in": ("{cells} cells rendered in {elapsed} s", "{cells} セルを {elapsed} 秒で生成"),
    "tune.table": ("Scores (ALL = 1, LoRA off = 0)", "スコア (ALL = 1、LoRA なし = 0)"),
    "tune.col.name": ("Weights", "重み"),
    "tune.col.effect_tuning": ("Effect kept, tuning seeds", "残った効果 (調整用シード)"),
    "tune.col.effect_held": ("Effect kept, held-out seeds", "残った効果 (検証用シード)"),
    "tune.col.side_tuning": ("Side effect left, tuning seeds", "残った副作用 (調整用シード)"),
    "tune.col.side_held": ("Side effect left, held-out seeds", "残った副作用 (検証用シード)"),
    "tune.grid": (
        "Before and after: ALL, each result and LoRA off at every seed, the keep region outlined",
        "比較: ALL、各結果、LoRA なしを各シードで表示 (残す領域を枠で表示)",
    ),
    "tune.grid.title": ("{name}: ALL vs tuned vs LoRA off ({region})", "{name}: ALL・調整結果・LoRA なし ({region})"),
    "tune.grid.box": ("keep box {box}", "残す領域 {box}"),
    "tune.grid.mask": ("keep mask {file} ({kept} of {width}x{height} pixels)",
                       "残す領域のマスク {file} ({width}x{height} ピクセル中 {kept})"),
    "tune.grid.scores": ("effect {effect:.2f} side {side:.2f}", "効果 {effect:.2f} 副作用 {side:.2f}"),
    "tune.grid.tuning": ("tuning", "調整用"),
    "tune.grid.held_out": ("held out", "検証用"),
    "tune.grid.english": ("The grid is shown in English: {error}", "比較グリッドは英語のまま表示しています: {error}"),
    "tune.none": ("No tune yet.", "自動調整はまだ実行していません。"),
    "tune.unfinished": (
        "Unfinished tune: {cells} of {budget} cells so far. Auto with the same options continues it.",
        "未完了の調整: {budget} セル中 {cells} セルまで。同じ設定で「自動調整」を押すと続きから再開します。",
    ),
    "tune.summary": (
        "Last tune: {winner} won; its weights are the sheet now (every tuned block fixed). {cells} of {budget} "
        "cells rendered; iterations {iterations}.",
        "前回の自動調整: {winner}の結果を採用し、シートに反映しました (調整した層はすべて固定)。"
        "{budget} セル中 {cells} セルを生成、イテレーション {iterations}。",
    ),
    "tune.goal": (
        "Goal: least side effect with effect kept ≥ {threshold} · keep region {box} · tuning seeds {tuning} · "
        "held-out seeds {held}",
        "目標: 残った効果 ≥ {threshold} のうち副作用が最小 · 残す領域 {box} · 調整用シード {tuning} · "
        "検証用シード {held}",
    ),
    "tune.finished": ("Tuned: {winner} won; the sheet holds its weights.",
                      "調整しました: {winner}の結果をシートに反映しました。"),
    "tune.cancelled": (
        "Cancelled; what the tune did is kept. Auto with the same options continues it.",
        "中止しました。ここまでの調整は保存されています。同じ設定で「自動調整」を押すと続きから再開します。",
    ),
    # plot tab
    "plot.render": ("Render the {mode} grid", "{mode} グリッドを生成"),
    "plot.render_next": ("Render next", "次を生成"),
    "plot.cancel": ("Cancel", "中止"),
    "plot.iteration": ("Iteration", "イテレーション"),
    "plot.compare": ("Compare with", "比較対象"),
    "plot.cells": ("Cells (blocks × seeds): click one", "セル (層 × シード): クリックして選択"),
    "plot.selected": ("Selected cell", "選択したセル"),
    "plot.take": ("Take this value (fix {block} at {value})", "この値を採用 ({block} を {value} で固定)"),
    "plot.keep": ("Keep (fix {block} at {value})", "維持 ({block} を {value} で固定)"),
    "plot.take_short": ("Take this value", "この値を採用"),
    "plot.keep_short": ("Keep", "維持"),
    "plot.base_cell": ("{label}: the base cell (nothing to fix)", "{label}: 基準のセル (固定する層はありません)"),
    "plot.no_iteration": ("No grid yet: render one.", "グリッドはまだありません。生成してください。"),
    "plot.grid_title": ("{name}: {mode}, iteration {number}", "{name}: {mode}、イテレーション {number}"),
    "plot.seed": ("seed {seed}", "シード {seed}"),
    "plot.diff": ("Diff {value}%", "変更量 {value}%"),
    "plot.side_by_side": ("Two iterations side by side", "2 つのイテレーションを並べて比較"),
    # history tab
    "history.table": ("Iterations", "イテレーション"),
    "history.col.number": ("#", "番号"),
    "history.col.kind": ("Kind", "種類"),
    "history.col.cells": ("Cells", "セル数"),
    "history.col.created": ("When", "日時"),
    "history.col.weights": ("Sheet before", "開始時のシート"),
    "history.decisions": ("Decisions after this iteration", "このイテレーション後の決定"),
    "history.go_back": ("Go back to this iteration's sheet", "このイテレーションのシートに戻す"),
    "history.compare": ("Compare two iterations", "2 つのイテレーションを比較"),
    "history.log": ("Project log", "プロジェクトの記録"),
    "history.thumbs": ("Grids", "グリッド"),
    # bake tab
    "bake.factors": ("Factor per block (what the bake multiplies)", "層ごとの係数 (焼き込みで掛ける値)"),
    "bake.output": ("Output file name (in the workspace)", "出力ファイル名 (ワークスペース内)"),
    "bake.run": ("Bake the finished sheet", "完成したシートを焼き込む"),
    "bake.verify": ("Verify (max relative error per block)", "検証 (層ごとの最大相対誤差)"),
    "bake.col.error": ("Max relative error", "最大相対誤差"),
    "bake.col.modules": ("Modules", "モジュール数"),
    "bake.col.factor": ("Factor", "係数"),
    "bake.col.ok": ("OK", "判定"),
    "bake.not_done": (
        "{count} blocks are not fixed yet; bake anyway with the current weights?",
        "未固定の層が {count} あります。現在の重みで焼き込みますか?",
    ),
    "bake.written": ("Written: {path}", "書き出しました: {path}"),
    "bake.meta": ("Metadata (Additional Networks fields)", "メタ情報 (Additional Networks の項目)"),
    "bake.meta.name": ("Name", "名前"),
    "bake.meta.author": ("Author", "作成者"),
    "bake.meta.keywords": ("Keywords", "キーワード"),
    "bake.meta.url": ("URL", "URL"),
    "bake.meta.description": ("Description", "説明"),
    "bake.meta.cover": ("Cover image: a rendered cell", "カバー画像: 生成したセル"),
    "bake.meta.weights": ("Write the tuned weights (lbw_block_weights)", "調整した重みを書き込む (lbw_block_weights)"),
    "bake.meta.sidecar": ("Also write the web UI sidecar .json", "WebUI 用の .json も書き出す"),
    "bake.meta.write": ("Write metadata", "メタ情報を保存"),
    "bake.hashes": ("Hashes", "ハッシュ"),
    "bake.file": ("File to describe", "メタ情報を書くファイル"),
    # messages
    "msg.saved": ("Saved.", "保存しました。"),
    "msg.reloaded": ("Reloaded {name} (version {version}).", "{name} を再読み込みしました (版 {version})。"),
    "msg.fixed": ("{block} fixed at {value}", "{block} を {value} で固定しました"),
    "msg.mode": ("Mode: {mode}", "モード: {mode}"),
    "msg.undo": ("Back to the sheet of iteration {number}", "イテレーション {number} のシートに戻しました"),
    "msg.conflict": (
        "This project changed in another tab or command; reload to see it, then try again.",
        "このプロジェクトは別のタブまたはコマンドで変更されました。再読み込みしてからやり直してください。",
    ),
    "msg.error": ("Error: {message}", "エラー: {message}"),
    "msg.progress": ("{done}/{total} cells, {elapsed} s elapsed, about {eta} s left",
                     "{done}/{total} セル、経過 {elapsed} 秒、残り約 {eta} 秒"),
    "msg.done_in": ("{total} cells in {elapsed} s", "{total} セル、{elapsed} 秒"),
    "msg.queued": ("Waiting for the device ({ahead} ahead)", "デバイスの空きを待っています (待ち {ahead})"),
    "msg.cancelling": ("Cancelling: it stops after the cell being drawn…",
                       "中止しています (描画中のセルの後で止まります)…"),
    "msg.cancelled": ("Cancelled; nothing was recorded.", "中止しました。何も記録されていません。"),
    "msg.rendered": (
        "Rendered iteration {number} ({cells} cells).",
        "イテレーション {number} を生成しました ({cells} セル)。",
    ),
    "msg.connection_ok": ("Connected: {detail}", "接続できました: {detail}"),
    "msg.no_project": ("Pick or create a project first.", "先にプロジェクトを選ぶか作成してください。"),
    "msg.path_refused": ("Refused: {path} is outside the folders this server may use.",
                         "拒否: {path} はこのサーバーが使えるフォルダの外です。"),
    "msg.copy": ("Copy", "コピー"),
    "msg.copied": ("Copied", "コピーしました"),
}

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def text(lang: str, key: str, **values: object) -> str:
    """The message ``key`` in ``lang`` (English for an unknown language) with ``values`` filled in.

    An unknown key is returned as itself, so a missing entry shows up on the page instead of failing a click.
    """
    pair = MESSAGES.get(key)
    if pair is None:
        return key
    template = pair[1] if lang == "ja" else pair[0]
    if not values:
        return template
    return string.Formatter().vformat(template, (), _Defaults(values))


class _Defaults(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def placeholders(template: str) -> set[str]:
    """The ``{name}`` placeholders of a template."""
    return set(_PLACEHOLDER.findall(template))


def pick_language(accept_language: str | None, forced: str | None = None) -> str:
    """``forced`` when given (``--lang``), else the best of ``LANGUAGES`` in an Accept-Language header.

    Example:
        >>> pick_language("fr-CH, fr;q=0.9, ja;q=0.8, en;q=0.7")
        'ja'
        >>> pick_language(None), pick_language("de"), pick_language("en", forced="ja")
        ('en', 'en', 'ja')
    """
    if forced in LANGUAGES:
        return forced
    best, best_q = DEFAULT_LANGUAGE, -1.0
    for position, part in enumerate((accept_language or "")[:1000].split(",")[:50]):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGUAGES:
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if not 0.0 < q <= 1.0:
            continue
        q -= position * 1e-6  # earlier wins a tie
        if q > best_q:
            best, best_q = primary, q
    return best


def catalogue(lang: str) -> dict[str, str]:
    """Every message of one language (for a page's JavaScript, tests and translators)."""
    index = 1 if lang == "ja" else 0
    return {key: pair[index] for key, pair in MESSAGES.items()}
