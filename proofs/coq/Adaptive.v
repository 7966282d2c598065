(** * Adaptive.v -- an adaptive (stopping-time) draft length keeps token-wise, block and HSD
    capped verification lossless.

    Mirrors hsd_ref/schemes/adaptive.py ([AdaptiveLength]); the math is peers-2026.md §5.  Peers:
    transformers' dynamic speculation ([ConfidenceCriteria]), SpecDec++ (arXiv 2405.19715), DISCO
    (arXiv 2405.04304), AdaEDL (arXiv 2410.18351).

    One iteration from context [c] with maximum draft length [k]: after the drafted [xs] (at most
    [k] tokens) the stopping rule stops with chance [stop c xs] on a coin of its own; otherwise the
    next token is drafted from [q] after [c ++ xs].  The realised draft (the token that triggered
    the stop kept) is verified by an unchanged verifier [V] ([Verifier] of Compose.v: token-wise
    [tw_verify], block [blk_verify], HSD capped [hsd_verify]).  [stop] is ANY real function of the
    context and the drafted prefix: a draft or target probability along the prefix, the next rows,
    a threshold, a constant chance; no hypothesis on it is needed (a chance in [0, 1] makes the
    mixture below a probability law, but the identity holds for every real [stop]).

    The proof (ours; sketched in peers-2026.md §5):
    - [prefix_consistent]: averaging the verifier's law (continued by the target) for the draft
      [xs ++ [x]] over [x ~ q] gives its law for [xs];
    - [optional_stopping]: for a prefix-consistent verifier, stopping at any stopping time of the
      draft gives the law of the empty draft (backward induction from the cap [k]:
      [s V(xs) + (1 - s) avg_x V(xs ++ [x]) = V(xs)]); with the empty draft's law = target sampling
      this is [adaptive_iteration_lossless];
    - [tw_prefix_consistent]: token-wise is prefix-consistent (one more draft token at the end
      changes the bonus token into a token-wise step, which is target sampling);
    - [blk_prefix_consistent]: block verification is too.  The scan reaches level t with chance
      pi_t, and below the new last level the token mass is min(q(b), pi_t p(b)) +
      max(pi_t p(b) - q(b), 0) = pi_t p(b) ([level_consistent]); the chance that no test above a
      level succeeds is consistent as well ([none_consistent]);
    - [hsd_eq_block_draft]: on every draft of positive draft probability one HSD-capped verification
      IS one block verification (HsdCapped.v proves this averaged over the draft; here per draft),
      so HSD capped is prefix-consistent where it matters.
    Main results: [adaptive_tokenwise_lossless], [adaptive_block_lossless],
    [adaptive_hsd_capped_lossless] (decoding loop, every [k], every stopping rule, every horizon).

    Not covered: a rule that uses the verifier's own uniforms (hsd_ref's lossy [SharedCoin]), a rule
    that discards the token it is about (hsd_ref's lossy [DropTrigger]), and a rule that changes
    from one iteration to the next with the past verifier randomness (transformers' online
    re-tuning of [num_assistant_tokens] across rounds): here the rule is one function of the context and the draft.
*)

From Coq Require Import Reals Lra Lia List.
From HSD Require Import Common SpecLossless Block HsdCapped Compose.
Import ListNotations.
Local Open Scope R_scope.

(** A stopping rule: the chance to stop after the drafted [xs] from the context [c]. *)
Definition StopRule (A : Type) : Type := list A -> list A -> R.

Lemma seq_prob_snoc {A : Type} (q : Model A) c xs x :
  seq_prob q c (xs ++ [x]) = seq_prob q c xs * q (c ++ xs) x.
Proof.
  revert c. induction xs as [|y ys IH]; intros c; simpl.
  - rewrite app_nil_r. ring.
  - rewrite IH, <- app_assoc. simpl. ring.
Qed.

Lemma app_cons_snoc {A : Type} (c ys : list A) (y : A) : c ++ y :: ys = (c ++ [y]) ++ ys.
Proof. rewrite <- app_assoc. reflexivity. Qed.

Lemma emit_vsum {A : Type} (vocab : list A) (y : A) (w : A -> R) (K : A -> Kont A) c n f :
  vsum vocab (fun x => w x * emit y (K x) c n f)
  = emit y (fun c' n' f' => vsum vocab (fun x => w x * K x c' n' f')) c n f.
Proof. unfold emit; destruct n; reflexivity. Qed.

Section Adaptive.
Context {A : Type} (vocab : list A) (q : Model A).

Local Notation vsum := (vsum vocab).

(** Drafting with a stopping rule: the drafted [xs] so far, at most [j] more tokens. *)
Fixpoint adraft (V : Verifier A) (stop : StopRule A) (G : Kont A) (j : nat) (xs : list A)
  (c : list A) (n : nat) (f : list A -> R) : R :=
  match j with
  | O => V G xs c n f
  | S j' => stop c xs * V G xs c n f
            + (1 - stop c xs) * vsum (fun x => q (c ++ xs) x * adraft V stop G j' (xs ++ [x]) c n f)
  end.

(** One adaptive iteration with maximum draft length [k]. *)
Definition adaptive_iteration (V : Verifier A) (stop : StopRule A) (k : nat) : @Iteration A :=
  fun G c n f => adraft V stop G k [] c n f.

(** Prefix consistency at one (continuation, context, horizon, test function), on the drafts of
    positive draft probability. *)
Definition prefix_consistent (V : Verifier A) (G : Kont A) (c : list A) (n : nat) (f : list A -> R) : Prop :=
  forall xs, seq_prob q c xs <> 0 ->
  vsum (fun x => q (c ++ xs) x * V G (xs ++ [x]) c n f) = V G xs c n f.

(** Optional stopping for a bounded stopping time, by backward induction. *)
Theorem optional_stopping (V : Verifier A) (stop : StopRule A) G c n f :
  prefix_consistent V G c n f ->
  forall j xs, seq_prob q c xs <> 0 -> adraft V stop G j xs c n f = V G xs c n f.
Proof.
  intros HV j. induction j as [|j IH]; intros xs Hxs; simpl; [reflexivity|].
  rewrite (vsum_ext vocab _ (fun x => q (c ++ xs) x * V G (xs ++ [x]) c n f)).
  - rewrite (HV xs Hxs). ring.
  - intros x. destruct (Req_EM_T (q (c ++ xs) x) 0) as [H0|H0]; [rewrite H0; ring|].
    rewrite IH; [reflexivity|]. rewrite seq_prob_snoc. intros H. apply Rmult_integral in H. tauto.
Qed.

Theorem adaptive_iteration_lossless (p : Model A) (V : Verifier A) (stop : StopRule A) (k : nat) :
  (forall G m, agree vocab p m G -> forall c n f, (n <= S m)%nat -> prefix_consistent V G c n f) ->
  (forall G m, agree vocab p m G -> forall c n f, (n <= S m)%nat -> V G [] c n f = target vocab p c n f) ->
  iteration_lossless vocab p (adaptive_iteration V stop k).
Proof.
  intros Hcons H0 G m HG c n f Hn. unfold adaptive_iteration.
  rewrite (optional_stopping V stop G c n f (Hcons G m HG c n f Hn) k []) by (simpl; lra).
  apply (H0 G m HG c n f Hn).
Qed.

(** ** Token-wise verification *)

Section Tokenwise.
Context (p : Model A) (Hp : is_model vocab p) (Hq : is_model vocab q).

Lemma tw_empty G m : agree vocab p m G -> forall c n f, (n <= S m)%nat ->
  tw_verify vocab p q G [] c n f = target vocab p c n f.
Proof.
  intros HG c n f Hn. rewrite <- (tw_avg vocab p q Hp Hq G m 0 HG c n f Hn).
  rewrite draft_avg_0. reflexivity.
Qed.

Lemma tw_prefix_all G m : agree vocab p m G ->
  forall xs c n f, (n <= S m)%nat ->
  vsum (fun x => q (c ++ xs) x * tw_verify vocab p q G (xs ++ [x]) c n f) = tw_verify vocab p q G xs c n f.
Proof.
  intros HG xs. induction xs as [|y ys IH]; intros c n f Hn.
  - (* one draft token against none: both are target sampling *)
    rewrite app_nil_r, (tw_empty G m HG c n f Hn).
    rewrite <- (tw_avg vocab p q Hp Hq G m 1 HG c n f Hn), draft_avg_S.
    apply vsum_ext; intros x. rewrite draft_avg_0. reflexivity.
  - simpl tw_verify.
    set (Rj := vsum (fun v => residual vocab p q c v * emit v G c n f)).
    rewrite (vsum_ext vocab _ (fun x => accept p q c y * (q (c ++ y :: ys) x * emit y (tw_verify vocab p q G (ys ++ [x])) c n f)
                                         + (1 - accept p q c y) * Rj * q (c ++ y :: ys) x))
      by (intros x; ring).
    rewrite vsum_plus, vsum_scal_l, vsum_scal_l.
    destruct (Hq (c ++ y :: ys)) as [_ Hq1]. rewrite Hq1.
    rewrite (emit_vsum vocab y (q (c ++ y :: ys)) (fun x => tw_verify vocab p q G (ys ++ [x]))).
    rewrite (emit_ext y _ (tw_verify vocab p q G ys)); [ring|].
    intros n' f' Hn'. rewrite app_cons_snoc. apply IH. lia.
Qed.

Theorem tw_prefix_consistent G m : agree vocab p m G ->
  forall c n f, (n <= S m)%nat -> prefix_consistent (tw_verify vocab p q) G c n f.
Proof. intros HG c n f Hn xs _. apply (tw_prefix_all G m HG xs c n f Hn). Qed.

End Tokenwise.

(** ** Block verification *)

Section Block.
Context (p : Model A) (Hp : is_model vocab p) (Hq : is_model vocab q).

(** Everything emitted from a level on ([level_avg]'s integrand) and the chance that no test from
    this level on succeeds. *)
Definition blevel (G : Kont A) (xs : list A) (c : list A) (pi : R) (n : nat) (f : list A -> R) : R :=
  above vocab p q G xs c pi n f
  + hlev vocab p q c pi (length xs) * none_above vocab p q c pi xs * bemit vocab p q G c pi (length xs) n f.

Definition bnone (xs : list A) (c : list A) (pi : R) : R :=
  (1 - hlev vocab p q c pi (length xs)) * none_above vocab p q c pi xs.

Lemma bnone_cons y zs c pi :
  bnone (y :: zs) c pi = (1 - Block.hmid vocab p q c pi) * bnone zs (c ++ [y]) (clamp p q c pi y).
Proof. unfold bnone. simpl. ring. Qed.

Lemma blevel_cons G y zs c pi n f :
  blevel G (y :: zs) c pi n f
  = emit y (fun c' n' f' => blevel G zs c' (clamp p q c pi y) n' f') c n f
    + Block.hmid vocab p q c pi * bnone zs (c ++ [y]) (clamp p q c pi y)
      * vsum (fun v => bresidual vocab p q c pi v * emit v G c n f).
Proof. unfold blevel, bnone. simpl. ring. Qed.

Lemma none_consistent : forall xs c pi, 0 <= pi <= 1 ->
  vsum (fun x => q (c ++ xs) x * bnone (xs ++ [x]) c pi) = bnone xs c pi.
Proof.
  intros xs. induction xs as [|y ys IH]; intros c pi Hpi.
  - rewrite app_nil_r. simpl app.
    rewrite (vsum_ext vocab _ (fun x => (1 - Block.hmid vocab p q c pi) * (q c x - q c x * clamp p q c pi x))).
    2: { intros x. rewrite bnone_cons. unfold bnone. simpl. ring. }
    rewrite vsum_scal_l.
    rewrite (vsum_ext vocab _ (fun x => q c x - Rmin (q c x) (pi * p c x)))
      by (intros x; rewrite (clamp_mass vocab p q Hp Hq) by lra; reflexivity).
    rewrite (deficit_sum vocab p q Hp Hq). unfold bnone. simpl. unfold Block.hmid.
    pose proof (bS_nonneg vocab p q c pi).
    destruct (Req_EM_T (bS vocab p q c pi + 1 - pi) 0) as [H0|H0]; [lra|]. field. exact H0.
  - simpl app. rewrite (vsum_ext vocab _ (fun x => (1 - Block.hmid vocab p q c pi)
                         * (q ((c ++ [y]) ++ ys) x * bnone (ys ++ [x]) (c ++ [y]) (clamp p q c pi y)))).
    2: { intros x. rewrite bnone_cons, app_cons_snoc. ring. }
    rewrite vsum_scal_l, IH by (apply (clamp_range vocab p q Hp Hq); lra).
    rewrite bnone_cons. reflexivity.
Qed.

Lemma level_consistent G m : agree vocab p m G ->
  forall xs c pi n f, 0 <= pi <= 1 -> (n <= S m)%nat ->
  vsum (fun x => q (c ++ xs) x * blevel G (xs ++ [x]) c pi n f) = blevel G xs c pi n f.
Proof.
  intros HG xs. induction xs as [|y ys IH]; intros c pi n f Hpi Hn.
  - (* both are pi times target sampling: [level_avg] at one draft token and at none *)
    rewrite app_nil_r. simpl app.
    pose proof (level_avg vocab p q Hp Hq G m HG 1 c pi n f Hpi Hn) as E1.
    pose proof (level_avg vocab p q Hp Hq G m HG 0 c pi n f Hpi Hn) as E0.
    rewrite draft_avg_S in E1. rewrite draft_avg_0 in E0. unfold blevel.
    rewrite E0, <- E1. apply vsum_ext; intros x. rewrite draft_avg_0. reflexivity.
  - simpl app.
    set (pi' := clamp p q c pi y).
    set (Rj := vsum (fun v => bresidual vocab p q c pi v * emit v G c n f)).
    rewrite (vsum_ext vocab _ (fun x => q (c ++ y :: ys) x * emit y (fun c' n' f' => blevel G (ys ++ [x]) c' pi' n' f') c n f
                                         + Block.hmid vocab p q c pi * Rj
                                           * (q ((c ++ [y]) ++ ys) x * bnone (ys ++ [x]) (c ++ [y]) pi')))
      by (intros x; rewrite blevel_cons, <- app_cons_snoc; fold pi' Rj; ring).
    rewrite vsum_plus, vsum_scal_l, none_consistent by (apply (clamp_range vocab p q Hp Hq); lra).
    rewrite (emit_vsum vocab y (q (c ++ y :: ys)) (fun x c' n' f' => blevel G (ys ++ [x]) c' pi' n' f')).
    rewrite (emit_ext y _ (fun c' n' f' => blevel G ys c' pi' n' f')).
    + rewrite blevel_cons. fold pi' Rj. ring.
    + intros n' f' Hn'. rewrite app_cons_snoc. apply IH; [apply (clamp_range vocab p q Hp Hq); lra|lia].
Qed.

Lemma blk_verify_level G xs c n f : blk_verify vocab p q G xs c n f = blevel G xs c 1 n f.
Proof. unfold blk_verify, blevel. rewrite hlev_one. ring. Qed.

Lemma blk_empty G m : agree vocab p m G -> forall c n f, (n <= S m)%nat ->
  blk_verify vocab p q G [] c n f = target vocab p c n f.
Proof.
  intros HG c n f Hn. rewrite blk_verify_level.
  pose proof (level_avg vocab p q Hp Hq G m HG 0 c 1 n f ltac:(lra) Hn) as E.
  rewrite draft_avg_0 in E. unfold blevel. rewrite E. ring.
Qed.

Theorem blk_prefix_consistent G m : agree vocab p m G ->
  forall c n f, (n <= S m)%nat -> prefix_consistent (blk_verify vocab p q) G c n f.
Proof.
  intros HG c n f Hn xs _.
  rewrite (vsum_ext vocab _ (fun x => q (c ++ xs) x * blevel G (xs ++ [x]) c 1 n f))
    by (intros x; rewrite blk_verify_level; reflexivity).
  rewrite blk_verify_level. apply (level_consistent G m HG); [lra|exact Hn].
Qed.

End Block.

(** ** HSD capped: per draft of positive probability, block verification *)

Section Hsd.
Context (p : Model A) (Hp : is_model vocab p) (Hq : is_model vocab q).

Lemma seq_prob_cons_nz c x xs :
  seq_prob q c (x :: xs) <> 0 -> q c x <> 0 /\ seq_prob q (c ++ [x]) xs <> 0.
Proof. simpl. intros H. split; intros E; apply H; rewrite E; ring. Qed.

Lemma hnone_eq : forall xs c P Q M, inv P Q M -> seq_prob q c xs <> 0 ->
  hnone vocab p q c P Q M true xs = none_above vocab p q c (pi_of P Q M) xs.
Proof.
  intros xs. induction xs as [|x xs IH]; intros c P Q M Hinv Hxs; [reflexivity|].
  destruct (seq_prob_cons_nz c x xs Hxs) as [Hx Hrest].
  simpl hnone. simpl none_above. rewrite (usable_true q c x Hx). simpl andb.
  rewrite IH by (try apply (step_inv vocab p q Hp Hq); assumption).
  rewrite (step_pi vocab p q Hp Hq), (hchance_eq vocab p q Hp Hq) by assumption. reflexivity.
Qed.

Lemma habove_eq G : forall xs c P Q M n f, inv P Q M -> seq_prob q c xs <> 0 ->
  habove vocab p q G xs c P Q M true n f = above vocab p q G xs c (pi_of P Q M) n f.
Proof.
  intros xs. induction xs as [|x xs IH]; intros c P Q M n f Hinv Hxs; [reflexivity|].
  destruct (seq_prob_cons_nz c x xs Hxs) as [Hx Hrest].
  pose proof (step_inv vocab p q Hp Hq c P Q M x Hinv Hx) as Hinv'.
  simpl habove. simpl above. rewrite (usable_true q c x Hx). simpl andb.
  apply emit_ext; intros n' f' _.
  rewrite IH, hnone_eq, hemit_eq by assumption.
  rewrite (step_pi vocab p q Hp Hq), (hchance_eq vocab p q Hp Hq) by assumption. reflexivity.
Qed.

Theorem hsd_eq_block_draft G xs c n f : seq_prob q c xs <> 0 ->
  hsd_verify vocab p q G xs c n f = blk_verify vocab p q G xs c n f.
Proof.
  intros Hxs. unfold hsd_verify, blk_verify.
  rewrite habove_eq, hnone_eq, hemit_eq by (exact inv_start || exact Hxs).
  rewrite pi_start. reflexivity.
Qed.

Theorem hsd_prefix_consistent G m : agree vocab p m G ->
  forall c n f, (n <= S m)%nat -> prefix_consistent (hsd_verify vocab p q) G c n f.
Proof.
  intros HG c n f Hn xs Hxs.
  rewrite (vsum_ext vocab _ (fun x => q (c ++ xs) x * blk_verify vocab p q G (xs ++ [x]) c n f)).
  - rewrite hsd_eq_block_draft by exact Hxs. apply (blk_prefix_consistent p Hp Hq G m HG c n f Hn xs Hxs).
  - intros x. destruct (Req_EM_T (q (c ++ xs) x) 0) as [H0|H0]; [rewrite H0; ring|].
    rewrite hsd_eq_block_draft; [reflexivity|]. rewrite seq_prob_snoc.
    intros H. apply Rmult_integral in H. tauto.
Qed.

End Hsd.

End Adaptive.

(** ** The decoding loops: every maximum length [k], every stopping rule, every horizon. *)

Theorem adaptive_tokenwise_lossless {A : Type} (vocab : list A) (p q : Model A) (stop : StopRule A) (k : nat) :
  is_model vocab p -> is_model vocab q ->
  forall fuel c n f, (n <= fuel)%nat ->
  decode (adaptive_iteration vocab q (tw_verify vocab p q) stop k) fuel c n f = target vocab p c n f.
Proof.
  intros Hp Hq fuel. apply decode_lossless. apply adaptive_iteration_lossless.
  - apply (tw_prefix_consistent vocab q p Hp Hq).
  - apply (tw_empty vocab q p Hp Hq).
Qed.

Theorem adaptive_block_lossless {A : Type} (vocab : list A) (p q : Model A) (stop : StopRule A) (k : nat) :
  is_model vocab p -> is_model vocab q ->
  forall fuel c n f, (n <= fuel)%nat ->
  decode (adaptive_iteration vocab q (blk_verify vocab p q) stop k) fuel c n f = target vocab p c n f.
Proof.
  intros Hp Hq fuel. apply decode_lossless. apply adaptive_iteration_lossless.
  - apply (blk_prefix_consistent vocab q p Hp Hq).
  - apply (blk_empty vocab q p Hp Hq).
Qed.

Theorem adaptive_hsd_capped_lossless {A : Type} (vocab : list A) (p q : Model A) (stop : StopRule A) (k : nat) :
  is_model vocab p -> is_model vocab q ->
  forall fuel c n f, (n <= fuel)%nat ->
  decode (adaptive_iteration vocab q (hsd_verify vocab p q) stop k) fuel c n f = target vocab p c n f.
Proof.
  intros Hp Hq fuel. apply decode_lossless. apply adaptive_iteration_lossless.
  - apply (hsd_prefix_consistent vocab q p Hp Hq).
  - intros G m HG c n f Hn. rewrite hsd_eq_block_draft by (simpl; lra || assumption).
    apply (blk_empty vocab q p Hp Hq G m HG c n f Hn).
Qed.
