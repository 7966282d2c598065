(** * Common.v -- the shared model of the losslessness proofs in proofs/coq.

    Everything here is over an arbitrary token type [A] and an arbitrary finite vocabulary given as
    a list [vocab : list A]; sums over the vocabulary are plain list sums, so the theorems hold for
    every finite vocabulary (no [NoDup] is needed: the same list is used on both sides).

    A *model* is a function from a context (the tokens so far) to next-token weights; it is a
    language model when every row is a probability distribution over [vocab] ([is_model]).

    Laws are written in continuation-passing style: a [Kont] maps a context [c], a horizon [n] and a
    test function [f] on sequences of [n] tokens to the expectation of [f] applied to the next [n]
    tokens the process emits from [c].  Two laws are equal iff these expectations agree for every
    [f] (take [f] an indicator to get the probability of one sequence; [target_explicit] spells the
    target's law out as a sum over all sequences).

    - [target p] is autoregressive sampling from [p] (the reference law).
    - [emit a K] emits the token [a] and continues with [K]; horizons are consumed as tokens are
      emitted; once the horizon is reached nothing more is observed.
    - [decode it fuel] runs iterations [it] one after another (each iteration receives the
      continuation to run after it: the next iterations).  [decode_lossless]: if one iteration
      preserves agreement with [target p], the whole decoding loop equals [target p] at every
      horizon [n <= fuel] (each iteration emits at least one token, so [fuel = n] suffices).
    - [draft_avg q k c F] averages [F] over the [k] draft tokens sampled autoregressively from [q]
      (the eager drafting of one iteration).
*)

From Coq Require Import Reals Lra Lia List.
Import ListNotations.
Local Open Scope R_scope.

(** ** Finite sums over lists *)

Fixpoint lsum {X : Type} (l : list X) (F : X -> R) : R :=
  match l with
  | [] => 0
  | x :: l' => F x + lsum l' F
  end.

Section Sums.
Context {X : Type}.

Lemma lsum_ext (l : list X) (F G : X -> R) :
  (forall x, In x l -> F x = G x) -> lsum l F = lsum l G.
Proof.
  induction l as [|x l IH]; simpl; intros H; [reflexivity|].
  rewrite (H x (or_introl eq_refl)), IH; [reflexivity|].
  intros y Hy; apply H; right; exact Hy.
Qed.

Lemma lsum_plus (l : list X) (F G : X -> R) :
  lsum l (fun x => F x + G x) = lsum l F + lsum l G.
Proof. induction l as [|x l IH]; simpl; [lra|rewrite IH; lra]. Qed.

Lemma lsum_minus (l : list X) (F G : X -> R) :
  lsum l (fun x => F x - G x) = lsum l F - lsum l G.
Proof. induction l as [|x l IH]; simpl; [lra|rewrite IH; lra]. Qed.

Lemma lsum_scal_l (l : list X) (a : R) (F : X -> R) :
  lsum l (fun x => a * F x) = a * lsum l F.
Proof. induction l as [|x l IH]; simpl; [lra|rewrite IH; lra]. Qed.

Lemma lsum_scal_r (l : list X) (a : R) (F : X -> R) :
  lsum l (fun x => F x * a) = lsum l F * a.
Proof. induction l as [|x l IH]; simpl; [lra|rewrite IH; lra]. Qed.

Lemma lsum_zero (l : list X) : lsum l (fun _ => 0) = 0.
Proof. induction l as [|x l IH]; simpl; [lra|rewrite IH; lra]. Qed.

Lemma lsum_nonneg (l : list X) (F : X -> R) :
  (forall x, 0 <= F x) -> 0 <= lsum l F.
Proof.
  intros H; induction l as [|x l IH]; simpl; [lra|].
  specialize (H x); lra.
Qed.

Lemma lsum_term_le (l : list X) (F : X -> R) (x : X) :
  (forall y, 0 <= F y) -> In x l -> F x <= lsum l F.
Proof.
  intros Hpos; induction l as [|y l IH]; simpl; [tauto|]. intros [<-|Hin].
  - pose proof (lsum_nonneg l F Hpos); lra.
  - specialize (IH Hin); specialize (Hpos y); lra.
Qed.

Lemma lsum_app (l1 l2 : list X) (F : X -> R) :
  lsum (l1 ++ l2) F = lsum l1 F + lsum l2 F.
Proof. induction l1 as [|x l IH]; simpl; [lra|rewrite IH; lra]. Qed.

Lemma lsum_map {Y : Type} (g : Y -> X) (l : list Y) (F : X -> R) :
  lsum (map g l) F = lsum l (fun y => F (g y)).
Proof. induction l as [|y l IH]; simpl; [reflexivity|rewrite IH; reflexivity]. Qed.

Lemma lsum_flat_map {Y : Type} (g : Y -> list X) (l : list Y) (F : X -> R) :
  lsum (flat_map g l) F = lsum l (fun y => lsum (g y) F).
Proof. induction l as [|y l IH]; simpl; [reflexivity|rewrite lsum_app, IH; reflexivity]. Qed.

End Sums.

(** ** Min / max facts used by every scheme *)

Lemma min_plus_excess (a b : R) : Rmin a b + Rmax (a - b) 0 = a.
Proof. unfold Rmin, Rmax; destruct (Rle_dec a b); destruct (Rle_dec (a - b) 0); lra. Qed.

Lemma min_plus_deficit (a b : R) : Rmin a b + Rmax (b - a) 0 = b.
Proof. unfold Rmin, Rmax; destruct (Rle_dec a b); destruct (Rle_dec (b - a) 0); lra. Qed.

Lemma Rmax_nonneg (a : R) : 0 <= Rmax a 0.
Proof. unfold Rmax; destruct (Rle_dec a 0); lra. Qed.

(** [q * min(1, s / q) = min(q, s)] for [q > 0] and [s >= 0]: the accepted mass of a token. *)
Lemma accept_mass (q s : R) : 0 < q -> 0 <= s -> q * Rmin 1 (s / q) = Rmin q s.
Proof.
  intros Hq Hs. unfold Rmin.
  destruct (Rle_dec 1 (s / q)) as [H1|H1]; destruct (Rle_dec q s) as [H2|H2].
  - lra.
  - exfalso. apply H2. apply (Rmult_le_compat_l q) in H1; [|lra].
    unfold Rdiv in H1. rewrite Rmult_1_r, <- Rmult_assoc, (Rmult_comm q s), Rmult_assoc,
      Rinv_r, Rmult_1_r in H1; lra.
  - exfalso. apply H1. apply (Rmult_le_reg_l q); [lra|].
    unfold Rdiv. rewrite Rmult_1_r, <- Rmult_assoc, (Rmult_comm q s), Rmult_assoc, Rinv_r; lra.
  - field. lra.
Qed.

Lemma Rmin_le_l (a b : R) : Rmin a b <= a.
Proof. apply Rmin_l. Qed.

(** ** The vocabulary, models, and the continuation-passing laws *)

Definition Kont (A : Type) : Type := list A -> nat -> (list A -> R) -> R.
Definition Model (A : Type) : Type := list A -> A -> R.

Section Laws.
Context {A : Type} (vocab : list A).

Definition vsum (F : A -> R) : R := lsum vocab F.

Definition is_dist (d : A -> R) : Prop := (forall x, 0 <= d x) /\ vsum d = 1.
Definition is_model (m : Model A) : Prop := forall c, is_dist (m c).

(** Autoregressive sampling of [n] tokens from [p], starting at context [c]. *)
Fixpoint target (p : Model A) (c : list A) (n : nat) (f : list A -> R) : R :=
  match n with
  | O => f []
  | S n' => vsum (fun v => p c v * target p (c ++ [v]) n' (fun s => f (v :: s)))
  end.

(** Emit [a], then run [K].  The horizon shrinks by one unless it is already exhausted. *)
Definition emit (a : A) (K : Kont A) (c : list A) (n : nat) (f : list A -> R) : R :=
  match n with
  | O => K (c ++ [a]) O f
  | S n' => K (c ++ [a]) n' (fun s => f (a :: s))
  end.

(** [G] agrees with the target law up to horizon [m]. *)
Definition agree (p : Model A) (m : nat) (G : Kont A) : Prop :=
  forall c n f, (n <= m)%nat -> G c n f = target p c n f.

(** One iteration of a scheme, given what runs after it. *)
Definition Iteration : Type := Kont A -> Kont A.

(** An iteration is lossless for [p] when, continued by anything that agrees with [p] up to
    horizon [m], it agrees with [p] up to horizon [m + 1]. *)
Definition iteration_lossless (p : Model A) (it : Iteration) : Prop :=
  forall G m, agree p m G -> agree p (S m) (it G).

(** The decoding loop: iterations one after another ([fuel] bounds their number). *)
Fixpoint decode (it : Iteration) (fuel : nat) : Kont A :=
  match fuel with
  | O => fun c n f => f []
  | S fuel' => it (decode it fuel')
  end.

Theorem decode_lossless (p : Model A) (it : Iteration) :
  iteration_lossless p it -> forall fuel, agree p fuel (decode it fuel).
Proof.
  intros Hit fuel; induction fuel as [|fuel IH].
  - intros c n f Hn. assert (n = O) by lia. subst n. reflexivity.
  - simpl. apply Hit. exact IH.
Qed.

(** *** Facts about the target law *)

Lemma vsum_plus F G : vsum (fun x => F x + G x) = vsum F + vsum G.
Proof. apply lsum_plus. Qed.
Lemma vsum_minus F G : vsum (fun x => F x - G x) = vsum F - vsum G.
Proof. apply lsum_minus. Qed.
Lemma vsum_scal_l a F : vsum (fun x => a * F x) = a * vsum F.
Proof. apply lsum_scal_l. Qed.
Lemma vsum_scal_r a F : vsum (fun x => F x * a) = vsum F * a.
Proof. apply lsum_scal_r. Qed.
Lemma vsum_ext F G : (forall x, F x = G x) -> vsum F = vsum G.
Proof. intros H; apply lsum_ext; intros x _; apply H. Qed.
Lemma vsum_ext_in F G : (forall x, In x vocab -> F x = G x) -> vsum F = vsum G.
Proof. apply lsum_ext. Qed.
Lemma vsum_nonneg F : (forall x, 0 <= F x) -> 0 <= vsum F.
Proof. apply lsum_nonneg. Qed.

(** The target law is the average, over its own next token, of emitting that token and going on:
    the one-token decomposition every proof below reduces to. *)
Lemma target_step (p : Model A) (c : list A) (n : nat) (f : list A -> R) :
  is_dist (p c) ->
  target p c n f = vsum (fun v => p c v * emit v (target p) c n f).
Proof.
  intros [_ Hsum]. destruct n as [|n]; simpl.
  - unfold emit; simpl. rewrite vsum_scal_r. unfold vsum in *. rewrite Hsum. lra.
  - unfold emit. reflexivity.
Qed.

(** Continuations that agree with the target up to [m] can be replaced by the target after one
    emitted token, up to horizon [m + 1]. *)
Lemma emit_agree (p : Model A) (m : nat) (G : Kont A) (a : A) c n f :
  agree p m G -> (n <= S m)%nat -> emit a G c n f = emit a (target p) c n f.
Proof.
  intros HG Hn. unfold emit. destruct n as [|n]; apply HG; lia.
Qed.

Lemma emit_ext (a : A) (K1 K2 : Kont A) c n f :
  (forall n' f', (n' <= n)%nat -> K1 (c ++ [a]) n' f' = K2 (c ++ [a]) n' f') ->
  emit a K1 c n f = emit a K2 c n f.
Proof. intros H. unfold emit; destruct n; apply H; lia. Qed.

(** ** Eager drafting: all sequences of [k] tokens and their draft probabilities *)

Fixpoint words (k : nat) : list (list A) :=
  match k with
  | O => [[]]
  | S k' => flat_map (fun x => map (cons x) (words k')) vocab
  end.

Fixpoint seq_prob (q : Model A) (c : list A) (xs : list A) : R :=
  match xs with
  | [] => 1
  | x :: xs' => q c x * seq_prob q (c ++ [x]) xs'
  end.

(** The average of [F] over a draft [x_1 .. x_k] sampled autoregressively from [q] after [c]. *)
Definition draft_avg (q : Model A) (k : nat) (c : list A) (F : list A -> R) : R :=
  lsum (words k) (fun xs => seq_prob q c xs * F xs).

Lemma draft_avg_0 q c F : draft_avg q O c F = F [].
Proof. unfold draft_avg; simpl; lra. Qed.

Lemma draft_avg_S q k c F :
  draft_avg q (S k) c F = vsum (fun x => q c x * draft_avg q k (c ++ [x]) (fun xs => F (x :: xs))).
Proof.
  unfold draft_avg, vsum; simpl. rewrite lsum_flat_map. apply lsum_ext; intros x _.
  rewrite lsum_map. rewrite <- lsum_scal_l. apply lsum_ext; intros xs _. simpl; lra.
Qed.

Lemma draft_avg_ext q k c F G :
  (forall xs, length xs = k -> F xs = G xs) -> draft_avg q k c F = draft_avg q k c G.
Proof.
  revert c F G; induction k as [|k IH]; intros c F G H.
  - rewrite !draft_avg_0; apply H; reflexivity.
  - rewrite !draft_avg_S. apply vsum_ext; intros x. f_equal. apply IH.
    intros xs Hl; apply H; simpl; rewrite Hl; reflexivity.
Qed.

Lemma draft_avg_plus q k c F G :
  draft_avg q k c (fun xs => F xs + G xs) = draft_avg q k c F + draft_avg q k c G.
Proof. unfold draft_avg. rewrite <- lsum_plus. apply lsum_ext; intros; lra. Qed.

Lemma draft_avg_scal q k c a F :
  draft_avg q k c (fun xs => a * F xs) = a * draft_avg q k c F.
Proof. unfold draft_avg. rewrite <- lsum_scal_l. apply lsum_ext; intros; lra. Qed.

Lemma draft_avg_const q k c a :
  is_model q -> draft_avg q k c (fun _ => a) = a.
Proof.
  intros Hq; revert c; induction k as [|k IH]; intros c.
  - apply draft_avg_0.
  - rewrite draft_avg_S. rewrite (vsum_ext _ (fun x => q c x * a)) by (intros x; rewrite IH; reflexivity).
    rewrite vsum_scal_r. destruct (Hq c) as [_ H1]. unfold vsum in *. rewrite H1. lra.
Qed.

(** Averaging over the later draft tokens commutes with emitting the first one. *)
Lemma draft_avg_emit q k c x (K : list A -> Kont A) (c0 : list A) n f :
  draft_avg q k c (fun xs => emit x (K xs) c0 n f)
  = emit x (fun c' n' f' => draft_avg q k c (fun xs => K xs c' n' f')) c0 n f.
Proof. unfold emit; destruct n; reflexivity. Qed.

(** ** The target law, spelled out: a sum over all [n]-token sequences of their probability. *)
Lemma target_explicit (p : Model A) (c : list A) (n : nat) (f : list A -> R) :
  target p c n f = lsum (words n) (fun ys => seq_prob p c ys * f ys).
Proof.
  revert c f; induction n as [|n IH]; intros c f.
  - simpl; lra.
  - simpl. unfold vsum. rewrite lsum_flat_map. apply lsum_ext; intros v _.
    rewrite IH, lsum_map, <- lsum_scal_l. apply lsum_ext; intros ys _; simpl; lra.
Qed.

(** Hence a draft sampled from [q] is the same as the first [k] tokens of [target q]. *)
Lemma draft_avg_is_target q k c F : draft_avg q k c F = target q c k F.
Proof. rewrite target_explicit. reflexivity. Qed.

(** With a duplicate-free vocabulary, the target law gives each sequence of vocabulary tokens its
    product probability ([indicator ys] is the test function of the event "the tokens are [ys]"). *)
Definition indicator (eq_dec : forall x y : A, {x = y} + {x <> y}) (ys : list A) (s : list A) : R :=
  if list_eq_dec eq_dec s ys then 1 else 0.

Lemma lsum_pick (eq_dec : forall x y : A, {x = y} + {x <> y}) (l : list A) (y : A) (F : A -> R) :
  NoDup l -> In y l -> lsum l (fun x => if eq_dec x y then F x else 0) = F y.
Proof.
  induction l as [|x l IH]; simpl; [tauto|]. intros Hnd Hin. inversion Hnd as [|? ? Hx Hnd']; subst.
  destruct (eq_dec x y) as [->|Hne].
  - rewrite (lsum_ext l _ (fun _ => 0)); [rewrite lsum_zero; lra|].
    intros z Hz. destruct (eq_dec z y) as [->|]; [contradiction|reflexivity].
  - destruct Hin as [->|Hin]; [contradiction|]. rewrite IH; auto; lra.
Qed.

Lemma target_ext (p : Model A) c n (f g : list A -> R) :
  (forall s, f s = g s) -> target p c n f = target p c n g.
Proof.
  revert c f g; induction n as [|n IH]; intros c f g H; simpl; [apply H|].
  apply vsum_ext; intros v. f_equal. apply IH. intros s; apply H.
Qed.

Lemma target_zero (p : Model A) c n : target p c n (fun _ => 0) = 0.
Proof.
  revert c; induction n as [|n IH]; intros c; simpl; [reflexivity|].
  rewrite (vsum_ext _ (fun _ => 0)); [apply lsum_zero|]. intros v; rewrite IH; lra.
Qed.

Lemma target_prob (eq_dec : forall x y : A, {x = y} + {x <> y}) (p : Model A) (c ys : list A) :
  NoDup vocab -> (forall y, In y ys -> In y vocab) ->
  target p c (length ys) (indicator eq_dec ys) = seq_prob p c ys.
Proof.
  intros Hnd. unfold indicator. revert c. induction ys as [|y ys IH]; intros c Hys.
  - simpl. destruct (list_eq_dec eq_dec [] []); [lra|congruence].
  - cbn [length target seq_prob]. unfold vsum.
    rewrite (lsum_ext vocab _ (fun x => if eq_dec x y then p c x * seq_prob p (c ++ [x]) ys else 0)).
    + rewrite (lsum_pick eq_dec vocab y (fun x => p c x * seq_prob p (c ++ [x]) ys)); auto.
      apply Hys; left; reflexivity.
    + intros x _. destruct (eq_dec x y) as [->|Hne].
      * f_equal. rewrite <- IH by (intros z Hz; apply Hys; right; exact Hz).
        apply target_ext; intros s.
        destruct (list_eq_dec eq_dec (y :: s) (y :: ys)) as [E|E];
          destruct (list_eq_dec eq_dec s ys) as [E'|E']; try reflexivity.
        -- inversion E; contradiction.
        -- subst; contradiction.
      * rewrite (target_ext p _ _ _ (fun _ => 0)); [rewrite target_zero; lra|].
        intros s. destruct (list_eq_dec eq_dec (x :: s) (y :: ys)) as [E|E]; [|reflexivity].
        inversion E; contradiction.
Qed.

End Laws.

Arguments target {A} vocab p c n f.
Arguments decode {A} it fuel _ _ _.
